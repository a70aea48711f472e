"""Contract tests for a whole :class:`~tensorhub.TensorHub` on one backend: the API of ``API.md``."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tensorhub import TensorHub
from tensorhub import datasets as _datasets
from tensorhub.errors import (
    BackendUnavailableError,
    ConflictError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidQueryError,
    NotFoundError,
    ScriptError,
    ScriptNotFoundError,
    ScriptSyntaxError,
    SerializationError,
    TensorHubError,
)
from tensorhub.ownership import OWNER_KEY


def _script(tmp_path: Path, body: str, name: str = "task_script.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def _all_blobs(hub: TensorHub) -> list[str]:
    """Every blob of the hub but the blob store's owner marker (:mod:`tensorhub.ownership`)."""
    return sorted(key for key in hub.blobs.list("") if key != OWNER_KEY)


class _Opaque:
    """An arbitrary object: must never be stored without allow_pickle."""

    def __init__(self, value: int) -> None:
        self.value = value


class HubContract:
    """Needs ``hub`` (a TensorHub on an empty store) and pytest's ``tmp_path``."""

    # ------------------------------------------------------------------ records
    def test_records_are_stamped(self, hub: TensorHub) -> None:
        before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
        hub.save_training_log(loss=0.5)
        (row,) = hub.find_training_logs()
        assert row["project_name"] == hub.project_name
        assert row["time"].tzinfo is not None and row["time"] >= before
        assert "_id" in row and row["loss"] == 0.5

    def test_queries_are_scoped_to_the_project(self, hub: TensorHub) -> None:
        other = TensorHub(hub.uri, project_name="someone-else", blobs=hub.blobs_uri)
        try:
            other.save_training_log(loss=1.0)
            hub.save_training_log(loss=2.0)
            assert [r["loss"] for r in hub.find_training_logs()] == [2.0]
            assert [r["loss"] for r in other.find_training_logs()] == [1.0]
            assert hub.find_training_logs(project_name="someone-else") == []
            assert hub.delete_training_log() == 1
            assert len(other.find_training_logs()) == 1
        finally:
            other.close()

    # ------------------------------------------------------------------ datasets
    def test_dataset_round_trip_keeps_structure_dtypes_shapes(self, hub: TensorHub) -> None:
        rng = np.random.default_rng(0)
        dataset = {
            "x": rng.random((50, 4, 3)).astype(np.float32),
            "y": rng.integers(0, 10, 50).astype(np.int8),
            "splits": (np.arange(5, dtype=np.uint64), [np.array([True, False]), np.float16(1.5)]),
            "names": np.array(["a", "bc", "def"]),
            "z": np.zeros((0, 3)),
            "meta": {"source": "unit", "n": 50, "ratio": 0.25, "ok": True, "none": None, "inf": float("inf")},
            "complex": np.array([1 + 2j, 3 - 4j]),
        }
        hub.save_dataset(dataset, "mixed")
        got = hub.find_dataset("mixed")
        assert set(got) == set(dataset)
        for key in ("x", "y", "names", "z", "complex"):
            assert got[key].dtype == dataset[key].dtype and got[key].shape == dataset[key].shape
            np.testing.assert_array_equal(got[key], dataset[key])
        assert isinstance(got["splits"], tuple) and isinstance(got["splits"][1], list)
        np.testing.assert_array_equal(got["splits"][0], dataset["splits"][0])
        assert got["splits"][1][1] == np.float16(1.5) and got["splits"][1][1].dtype == np.float16
        assert got["meta"] == dataset["meta"]

    def test_tensorlayer_dataset_tutorial(self, hub: TensorHub) -> None:
        X_train, y_train = np.ones((20, 784), np.float32), np.arange(20)
        X_test, y_test = np.zeros((5, 784), np.float32), np.arange(5)
        hub.save_dataset(dataset=[X_train, y_train, X_test, y_test], dataset_name="mnist",
                         description="this is a tutorial")
        hub.save_dataset([X_train[:10], y_train[:10], X_test, y_test], "mnist", version="1.0")
        dataset = hub.find_dataset("mnist")
        assert dataset[0].shape == (10, 784)  # newest first
        dataset = hub.find_dataset("mnist", version="1.0")
        assert dataset[0].shape == (10, 784)
        datasets = hub.find_all_datasets("mnist")
        assert [d[0].shape[0] for d in datasets] == [10, 20]
        assert hub.find_dataset("mnist", description="this is a tutorial")[0].shape == (20, 784)
        assert hub.find_dataset("absent") is None
        assert len(hub.find_datasets("mnist")) == 2 and hub.find_top_dataset("mnist") is not None

    def test_dataset_records_hold_the_schema(self, hub: TensorHub) -> None:
        hub.save_dataset([np.ones((3, 2), np.float64), np.arange(3)], "s")
        (record,) = hub.find_dataset_records("s")
        assert [(s["dtype"], s["shape"]) for s in record["schema"]] == [("<f8", [3, 2]), (np.arange(3).dtype.str, [3])]
        assert record["nbytes"] == 48 + np.arange(3).nbytes

    def test_dataset_sort_and_operators(self, hub: TensorHub) -> None:
        for version in (1, 3, 2):
            hub.save_dataset(np.full(2, version), "v", version=version)
        assert hub.find_dataset("v", sort=[("version", 1)])[0] == 1
        assert hub.find_dataset("v", sort=[("version", -1)])[0] == 3
        assert sorted(d[0] for d in hub.find_all_datasets("v", version={"$gte": 2})) == [2, 3]
        assert hub.find_dataset("v", **{"$or": [{"version": 7}, {"version": 3}]})[0] == 3

    def test_lazy_dataset_reads_slices(self, hub: TensorHub) -> None:
        x = np.arange(1000 * 6, dtype=np.int32).reshape(1000, 6)
        hub.save_dataset((x, {"y": np.arange(1000)}), "lazy")
        lazy_x, rest = hub.find_dataset("lazy", lazy=True)
        assert lazy_x.shape == x.shape and lazy_x.dtype == x.dtype and len(lazy_x) == 1000
        np.testing.assert_array_equal(lazy_x[10:20], x[10:20])
        np.testing.assert_array_equal(lazy_x[-3], x[-3])
        np.testing.assert_array_equal(lazy_x[[5, 900, 5]], x[[5, 900, 5]])
        np.testing.assert_array_equal(lazy_x[100:0:-7, 2], x[100:0:-7, 2])
        np.testing.assert_array_equal(np.asarray(rest["y"]), np.arange(1000))
        with pytest.raises(IndexError):
            lazy_x[1000]

    def test_delete_datasets_frees_only_unshared_chunks(self, hub: TensorHub) -> None:
        hub.save_dataset([np.ones(3), np.zeros(2)], "gone")
        hub.save_dataset([np.ones(3)], "kept")  # the same bytes as gone[0]: stored once
        assert len(_all_blobs(hub)) == 2
        assert hub.delete_datasets(dataset_name="gone") == 1
        assert hub.find_dataset("gone") is None
        assert len(_all_blobs(hub)) == 1  # the shared chunk stays for "kept"
        np.testing.assert_array_equal(hub.find_dataset("kept")[0], np.ones(3))
        assert hub.delete_datasets() == 1 and _all_blobs(hub) == []

    def test_saving_the_same_bytes_twice_stores_them_once(self, hub: TensorHub) -> None:
        x = np.random.default_rng(1).random((4000, 64), dtype=np.float32)  # 1 MiB
        hub.save_dataset({"x": x}, "dup", chunk_bytes=256 << 10)
        before = _all_blobs(hub)
        assert len(before) == 4
        hub.save_dataset({"x": x}, "dup", version=2, chunk_bytes=256 << 10)
        assert _all_blobs(hub) == before
        assert hub.delete_datasets(version=2) == 1 and _all_blobs(hub) == before  # still used by version 1
        np.testing.assert_array_equal(hub.find_dataset("dup")["x"], x)

    def test_lazy_reads_only_the_chunks_a_slice_needs(self, hub: TensorHub) -> None:
        x = np.arange(10_000 * 8, dtype=np.int64).reshape(10_000, 8)  # 64 KiB rows per 1,000
        hub.save_dataset([x], "chunky", chunk_bytes=64_000)
        (lazy,) = hub.find_dataset("chunky", lazy=True)
        assert len(lazy.manifest.chunks) == 10
        reads: list[str] = []
        original_get, original_open = hub.blobs.get, hub.blobs.open
        hub.blobs.get = lambda key: reads.append(key) or original_get(key)
        hub.blobs.open = lambda key: reads.append(key) or original_open(key)
        try:
            np.testing.assert_array_equal(lazy[2500:3500], x[2500:3500])
            assert len(set(reads)) == 2  # rows 2500..3499 live in chunks 2 and 3
            np.testing.assert_array_equal(lazy[[9999, 0]], x[[9999, 0]])
            assert len(set(reads)) == 4
        finally:
            del hub.blobs.get, hub.blobs.open

    def test_append_grows_along_the_first_axis(self, hub: TensorHub) -> None:
        x, y = np.arange(50, dtype=np.float32).reshape(25, 2), np.arange(25)
        hub.save_dataset({"x": x, "y": y, "note": "events"}, "grow", version="1.0", chunk_bytes=64)
        assert hub.append_dataset("grow", {"x": x[:7] + 100, "y": y[:7] + 100, "note": "events"}) == 32
        assert hub.append_dataset("grow", {"x": x[:1], "y": y[:1], "note": "events"}, version="1.0") == 33
        got = hub.find_dataset("grow")
        np.testing.assert_array_equal(got["x"], np.concatenate([x, x[:7] + 100, x[:1]]))
        np.testing.assert_array_equal(got["y"], np.concatenate([y, y[:7] + 100, y[:1]]))
        (record,) = hub.find_dataset_records("grow")
        assert record["rows"] == 33 and [s["shape"] for s in record["schema"]] == [[33, 2], [33]]
        with pytest.raises(InvalidArgumentError):
            hub.append_dataset("grow", {"x": np.ones((2, 3)), "y": y[:2], "note": "events"})
        with pytest.raises(InvalidArgumentError):
            hub.append_dataset("grow", [x, y])
        with pytest.raises(LookupError):
            hub.append_dataset("absent", [x])
        assert hub.find_dataset_records("grow")[0]["rows"] == 33  # refused appends changed nothing
        hub.delete_datasets()
        assert _all_blobs(hub) == []  # replaced tail chunks are freed with the dataset

    def test_collect_garbage_deletes_only_old_unreferenced_blobs(self, hub: TensorHub) -> None:
        from bson import ObjectId

        x = np.arange(3000, dtype=np.float64).reshape(300, 10)
        hub.save_dataset([x], "kept", chunk_bytes=8000)
        other = TensorHub(hub.uri, project_name="another-project", blobs=hub.blobs_uri)
        try:
            other.save_model([x[:5] + 1], "theirs")
            owned = set(_all_blobs(hub))
            # what crashed saves leave: a chunk no record lists, blobs of a record never stored
            hub.blobs.put("chunks/" + "ab" * 32, b"orphan chunk")
            hub.blobs.put(f"datasets/{ObjectId()}/pickle-0.bin", b"orphan blob")
            hub.blobs.put("notes/readme.txt", b"not ours: never collected")
            assert hub.collect_garbage() == {"chunks": 0, "record_blobs": 0, "incomplete": 0,
                                            "kept_young": len(owned) + 3}
            dry = hub.collect_garbage(older_than=0, dry_run=True)
            assert (dry["chunks"], dry["record_blobs"]) == (1, 1), dry
            assert len(_all_blobs(hub)) == len(owned) + 3  # a dry run deletes nothing
            counts = hub.collect_garbage(older_than=0)
            assert (counts["chunks"], counts["record_blobs"]) == (1, 1)
            assert set(_all_blobs(hub)) == owned | {"notes/readme.txt"}
            np.testing.assert_array_equal(hub.find_dataset("kept")[0], x)
            np.testing.assert_array_equal(other.find_model(model_name="theirs")[0], x[:5] + 1)
            assert hub.collect_garbage(older_than=0) == {"chunks": 0, "record_blobs": 0, "incomplete": 0,
                                                        "kept_young": 0}
            with pytest.raises(InvalidArgumentError):
                hub.collect_garbage(older_than=-1)
        finally:
            other.close()

    def test_structured_dtypes_keep_their_fields(self, hub: TensorHub) -> None:
        packed = np.dtype([("label", "<i2"), ("box", "<f4", (4,)), ("name", "S5")])
        aligned = np.dtype([("flag", "u1"), ("score", "<f8")], align=True)  # 7 padding bytes between fields
        x = np.zeros(40, packed)
        x["label"], x["box"][:, 2], x["name"] = np.arange(40), np.linspace(0, 1, 40), b"cat"
        z = np.zeros(40, aligned)
        z["flag"], z["score"] = np.arange(40) % 2, np.arange(40) / 3
        hub.save_dataset({"x": x, "z": z}, "boxes", chunk_bytes=300)
        got = hub.find_dataset("boxes")
        for key, original in (("x", x), ("z", z)):
            assert got[key].dtype == original.dtype and got[key].dtype.names == original.dtype.names
            np.testing.assert_array_equal(got[key], original)
        lazy = hub.find_dataset("boxes", lazy=True)
        assert lazy["x"].dtype == packed
        np.testing.assert_array_equal(lazy["x"][5:30]["box"], x[5:30]["box"])
        assert hub.append_dataset("boxes", {"x": x[:3], "z": z[:3]}) == 43
        np.testing.assert_array_equal(hub.find_dataset("boxes")["x"]["label"][-3:], [0, 1, 2])
        renamed = np.zeros(3, [("kind", "<i2"), ("box", "<f4", (4,)), ("name", "S5")])
        with pytest.raises(InvalidArgumentError, match="same fields"):
            hub.append_dataset("boxes", {"x": renamed, "z": z[:3]})
        batch = next(iter(hub.stream_dataset("boxes", batch_size=8, seed=0)))
        assert batch["x"].dtype == packed and batch["z"].dtype == aligned
        np.testing.assert_array_equal(batch["z"]["score"], batch["x"]["label"] / 3)  # rows stay aligned

    def test_stream_covers_every_row_once_per_epoch_deterministically(self, hub: TensorHub) -> None:
        n = 1037
        x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
        hub.save_dataset({"x": x, "y": np.arange(n), "meta": "kept"}, "s", chunk_bytes=400)
        batches = list(hub.stream_dataset("s", batch_size=64, seed=7, epochs=2))
        assert len(batches) == 2 * 17 and all(len(b["y"]) == 64 for b in batches[:16]) and len(batches[16]["y"]) == 13
        assert all(b["meta"] == "kept" for b in batches)
        first, second = [np.concatenate([b["y"] for b in batches[i * 17:(i + 1) * 17]]) for i in (0, 1)]
        assert sorted(first) == list(range(n)) and sorted(second) == list(range(n))
        assert not np.array_equal(first, np.arange(n)) and not np.array_equal(first, second)  # shuffled
        for b in batches:
            np.testing.assert_array_equal(b["x"], x[b["y"]])  # rows stay aligned across arrays
        again = np.concatenate([b["y"] for b in hub.stream_dataset("s", batch_size=64, seed=7, epochs=2)])
        np.testing.assert_array_equal(again, np.concatenate([first, second]))
        ordered = np.concatenate([b["y"] for b in hub.stream_dataset("s", batch_size=100, shuffle=False)])
        np.testing.assert_array_equal(ordered, np.arange(n))
        assert len(hub.stream_dataset("s", batch_size=100, drop_last=True)) == 10

    def test_stream_refuses_arrays_of_different_lengths(self, hub: TensorHub) -> None:
        hub.save_dataset([np.ones((10, 2)), np.ones(5)], "splits")
        with pytest.raises(SerializationError, match="own dataset"):
            hub.stream_dataset("splits", batch_size=2)
        with pytest.raises(LookupError):
            hub.stream_dataset("absent", batch_size=2)

    def test_arbitrary_objects_are_refused_without_pickle(self, hub: TensorHub) -> None:
        with pytest.raises(SerializationError, match="allow_pickle"):
            hub.save_dataset([np.ones(2), _Opaque(1)], "unsafe")
        with pytest.raises(SerializationError):
            hub.save_dataset(np.array([{"a": 1}], dtype=object), "unsafe")
        assert hub.find_dataset_records("unsafe") == [] and _all_blobs(hub) == []

    def test_pickle_only_when_asked_on_save_and_load(self, hub: TensorHub) -> None:
        hub.save_dataset([np.ones(2), _Opaque(7)], "pickled", allow_pickle=True)
        with pytest.raises(SerializationError, match="allow_pickle"):
            hub.find_dataset("pickled")
        got = hub.find_dataset("pickled", allow_pickle=True)
        assert got[1].value == 7 and np.array_equal(got[0], np.ones(2))

    def test_bad_dataset_arguments(self, hub: TensorHub) -> None:
        with pytest.raises(InvalidArgumentError):
            hub.save_dataset(np.ones(2), 123)
        with pytest.raises(InvalidArgumentError):
            hub.save_dataset(np.ones(2), "")
        with pytest.raises(SerializationError):
            hub.save_dataset(np.ones(2), "tagged", tag=_Opaque(1))
        assert hub.find_dataset_records() == [] and _all_blobs(hub) == []

    # ------------------------------------------------------------------ models
    def test_parameter_set_model_round_trip_and_record_attributes(self, hub: TensorHub) -> None:
        params = [np.ones((3, 2), np.float32), np.zeros(2, np.float32)]
        hub.save_model(params, accuracy=0.8, loss=2.3, name="second_model")
        net = hub.find_model(accuracy=0.8, loss=2.3)
        assert isinstance(net, list) and len(net) == 2
        np.testing.assert_array_equal(net[0], params[0])
        assert net._name == "second_model" and net._accuracy == 0.8
        assert net.tensorhub_record["model_name"] == "model"
        assert net.tensorhub_record["adapter"] == "params"

    def test_model_tutorial_sorting_and_deletion(self, hub: TensorHub) -> None:
        for acc in (0.5, 0.9, 0.7):
            hub.save_model({"w": np.full(2, acc)}, "mlp", test_accuracy=acc)
        with pytest.warns(DeprecationWarning):
            net = hub.find_model(sess=object(), sort=[("test_accuracy", -1)])
        assert net._test_accuracy == 0.9
        assert hub.find_model(sort=[("time", 1)])._test_accuracy == 0.5
        assert hub.find_model(sort=[("time", -1)])._test_accuracy == 0.7
        assert hub.find_model()._test_accuracy == 0.7  # newest first by default
        assert hub.find_top_model(test_accuracy={"$lt": 0.6})._test_accuracy == 0.5
        assert len(hub.find_all_models(model_name="mlp")) == 3
        assert hub.delete_model(test_accuracy=0.5) == 1
        assert hub.delete_model() == 2
        assert hub.find_model() is None and _all_blobs(hub) == []

    def test_unknown_model_type_is_refused(self, hub: TensorHub) -> None:
        with pytest.raises(SerializationError, match="adapter"):
            hub.save_model(_Opaque(1), "weird")
        assert hub.find_model() is None and _all_blobs(hub) == []

    def test_bad_model_arguments_name_the_model(self, hub: TensorHub) -> None:
        with pytest.raises(SerializationError, match=r"^model\[1\]"):
            hub.save_model([np.ones(2), _Opaque(1)], "params")
        with pytest.raises(InvalidArgumentError, match="model_name"):
            hub.find_model(model_name=3)  # never silently "not found"
        with pytest.raises(InvalidArgumentError, match="model_name"):
            hub.find_all_models(model_name="")
        assert hub.find_model() is None and _all_blobs(hub) == []

    def test_torch_module_round_trip(self, hub: TensorHub) -> None:
        torch = pytest.importorskip("torch")
        from tensorhub.testing.torch_models import TinyMLP

        net = TinyMLP(4, 5, 2)
        hub.save_model(net, "torchnet", test_accuracy=0.93)
        loaded = hub.find_model(model_name="torchnet")
        assert isinstance(loaded, TinyMLP) and loaded is not net
        x = torch.randn(5, 4)
        assert torch.equal(loaded(x), net(x))
        assert loaded._test_accuracy == 0.93 and loaded.tensorhub_record["adapter"] == "torch"
        target = TinyMLP(4, 5, 2)
        into = hub.find_model(model_name="torchnet", into=target)
        assert into is target and torch.equal(target(x), net(x))
        with pytest.raises(TensorHubError):
            hub.find_model(model_name="torchnet", into=TinyMLP(4, 3, 2))
        hub.save_model(torch.nn.Sequential(torch.nn.Linear(2, 2)), "seq")
        with pytest.raises(InvalidArgumentError, match="tensorhub_init_kwargs"):
            hub.find_model(model_name="seq")  # Sequential() cannot be rebuilt without its layers

    # models (issue 6): chunked parameters, exported programs, checkpoints, lineage, comparison
    def test_model_records_say_adapter_and_format_and_list_their_chunks(self, hub: TensorHub) -> None:
        hub.save_model({"w": np.arange(6.0).reshape(2, 3), "b": np.float32(1.5), "n": 3}, "fmt")
        record = hub.find_model(model_name="fmt").tensorhub_record
        assert record["adapter"] == "params" and record["format"] == "chunks"
        assert sorted(record["blob_refs"]) == sorted({d for a in record["arrays"] for d in a["chunks"]})
        assert _all_blobs(hub) == sorted(f"chunks/{d}" for d in record["blob_refs"])
        net = hub.find_model(model_name="fmt")
        np.testing.assert_array_equal(net["w"], np.arange(6.0).reshape(2, 3))
        assert net["b"] == np.float32(1.5) and net["b"].dtype == np.float32 and net["n"] == 3

    def test_parameter_set_edge_arrays_round_trip(self, hub: TensorHub) -> None:
        params = {"empty_rows": np.zeros((0, 3)), "empty_cols": np.zeros((3, 0), np.float32), "zero_d": np.array(7),
                  "strings": np.array(["x", "yz"]), "transposed": np.arange(12).reshape(3, 4).T,
                  "structured": np.array([(1, 2.0)], dtype=[("i", "<i4"), ("f", "<f8")]),
                  "complex": np.array([1 + 2j]), "half": np.ones(5, np.float16)}
        hub.save_model(params, "edges")
        got = hub.find_model(model_name="edges")
        for key, value in params.items():
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
            np.testing.assert_array_equal(got[key], value)

    def test_parameter_checkpoints_share_unchanged_arrays(self, hub: TensorHub) -> None:
        rng = np.random.default_rng(0)
        params = [rng.random((300, 40)), rng.random(40), np.zeros(3, np.int64)]
        hub.save_model(params, "ckpt", epoch=1)
        first = _all_blobs(hub)
        assert len(first) == 3
        params[1] = params[1] + 1  # one "training step" changed one array
        hub.save_model(params, "ckpt", epoch=2)
        assert len(_all_blobs(hub)) == 4  # only the changed array is new
        hub.save_model(params, "ckpt", epoch=3)
        assert len(_all_blobs(hub)) == 4  # nothing changed: nothing new
        assert hub.delete_model(epoch=1) == 1
        assert len(_all_blobs(hub)) == 3  # epoch 1's own array is freed, the shared ones stay
        np.testing.assert_array_equal(hub.find_model(epoch=2)[1], params[1])
        assert hub.delete_model() == 2 and _all_blobs(hub) == []

    def test_corrupted_parameter_chunk_is_an_error_naming_the_model(self, hub: TensorHub) -> None:
        from tensorhub.errors import CorruptDataError

        hub.save_model([np.arange(1000.0)], "fragile")
        (key,) = _all_blobs(hub)
        hub.blobs.put(key, hub.blobs.get(key)[:-10])  # truncated
        with pytest.raises(CorruptDataError, match="fragile"):
            hub.find_model(model_name="fragile")
        hub.blobs.put(key, b"\0" * 8000)  # overwritten
        with pytest.raises(CorruptDataError, match="fragile"):
            hub.find_model(model_name="fragile")

    def test_torch_checkpoints_store_the_architecture_once(self, hub: TensorHub) -> None:
        torch = pytest.importorskip("torch")
        from tensorhub.testing.torch_models import TinyMLP

        net = TinyMLP(4, 5, 2).eval()
        x = torch.randn(3, 4)
        hub.save_model(net, "ckpt", epoch=1, example_inputs=(x,))
        record = hub.find_model(model_name="ckpt").tensorhub_record
        assert record["torch_architecture"] == "torch.export" and record["format"] == "chunks"
        tensors = len(net.state_dict())
        assert len(_all_blobs(hub)) == tensors + 1  # one chunk per tensor, one for the program
        with torch.no_grad():
            net.out.bias += 1
        hub.save_model(net, "ckpt", epoch=2, example_inputs=(x,))
        assert len(_all_blobs(hub)) == tensors + 2  # the changed bias only: the program is shared
        hub.save_model(net, "ckpt", epoch=3)  # no program: the class path
        assert len(_all_blobs(hub)) == tensors + 2
        loaded = hub.find_model(epoch=2)
        assert not isinstance(loaded, TinyMLP) and torch.equal(loaded(x), net(x))
        assert hub.find_model(epoch=3).tensorhub_record["torch_architecture"] == "class"
        assert hub.delete_model(epoch=2) == 1 and len(_all_blobs(hub)) == tensors + 2  # epoch 1 keeps the program
        assert hub.delete_model() == 2 and _all_blobs(hub) == []

    def test_exported_program_keeps_dtypes_buffers_and_constants(self, hub: TensorHub) -> None:
        torch = pytest.importorskip("torch")
        from tensorhub.testing.torch_models import DtypeZoo

        net = DtypeZoo(4)
        net.train()(torch.randn(8, 4))  # move the BatchNorm statistics away from their defaults
        net.eval()
        x = torch.randn(3, 4)
        hub.save_model(net, "zoo", example_inputs=(x,))
        program = hub.find_model(model_name="zoo")
        assert torch.equal(program(x), net(x))
        rebuilt = hub.find_model(model_name="zoo", into=DtypeZoo(4).eval())
        for key, value in net.state_dict().items():
            got = rebuilt.state_dict()[key]
            assert got.dtype == value.dtype and torch.equal(got, value), key
        assert torch.equal(rebuilt(x), net(x))
        record = program.tensorhub_record
        assert {p["dtype"] for p in record["parameters"]} >= {"torch.bfloat16", "torch.float16", "torch.bool"}
        hub.save_model(net, "zoo-class")
        assert torch.equal(hub.find_model(model_name="zoo-class").eval()(x), net(x))

    def test_pickled_state_only_when_asked_on_save_and_load(self, hub: TensorHub) -> None:
        torch = pytest.importorskip("torch")
        from tensorhub.testing.torch_models import WithExtraState

        net = WithExtraState()
        net.vocabulary = {"b": 2}
        with pytest.raises(SerializationError, match="allow_pickle"):
            hub.save_model(net, "extra")
        assert hub.find_model() is None and _all_blobs(hub) == []
        hub.save_model(net, "extra", allow_pickle=True)
        with pytest.raises(SerializationError, match="allow_pickle"):
            hub.find_model(model_name="extra")
        loaded = hub.find_model(model_name="extra", allow_pickle=True)
        assert loaded.vocabulary == {"b": 2} and torch.equal(loaded.linear.weight, net.linear.weight)

    def test_failed_export_is_a_clear_error_and_leaves_nothing(self, hub: TensorHub) -> None:
        torch = pytest.importorskip("torch")
        from tensorhub.testing.torch_models import TinyMLP

        with pytest.raises(SerializationError, match="example_inputs"):
            hub.save_model(TinyMLP(4, 5, 2), "bad", example_inputs=(torch.randn(3, 7),))  # wrong width
        assert hub.find_model() is None and _all_blobs(hub) == []

    def test_model_lineage(self, hub: TensorHub, tmp_path: Path) -> None:
        from tensorhub.errors import NotFoundError

        dataset_id = hub.save_dataset([np.ones(3)], "mnist", version="1.0")
        other_id = hub.save_dataset([np.zeros(3)], "cifar")
        task_id = hub.create_task("train", _script(tmp_path, "x = 1\n"))
        (dataset_record,) = hub.find_dataset_records("mnist")
        hub.save_model([np.ones(2)], "a", dataset=dataset_record, task=task_id)
        hub.save_model([np.ones(2)], "b", dataset=str(dataset_id))
        hub.save_model([np.ones(2)], "c", dataset=other_id)
        hub.save_model([np.ones(2)], "d")
        assert {m._model_name for m in hub.find_all_models(dataset_id=dataset_id)} == {"a", "b"}
        assert {m._model_name for m in hub.find_all_models(dataset=str(dataset_id))} == {"a", "b"}
        assert {m._model_name for m in hub.find_all_models(dataset=dataset_record)} == {"a", "b"}
        (model,) = hub.find_all_models(task_id=task_id)
        assert model._model_name == "a" and model._dataset_id == dataset_id
        assert hub.find_tasks(_id=model._task_id)[0]["task_name"] == "train"
        assert hub.find_model(model_name="d").tensorhub_record.get("dataset_id") is None
        assert [r["model_name"] for r in hub.compare_models(dataset_id=other_id)] == ["c"]
        with pytest.raises(NotFoundError):
            hub.save_model([np.ones(2)], "e", dataset=task_id)  # a task's id is no dataset's
        with pytest.raises(InvalidArgumentError, match="dataset_name"):
            hub.save_model([np.ones(2)], "e", dataset="mnist")
        assert hub.delete_model(dataset=dataset_id) == 2
        assert len(hub.find_all_models()) == 2

    def test_compare_models(self, hub: TensorHub) -> None:
        for i, (acc, loss) in enumerate([(0.7, 0.9), (0.9, 0.4), (0.8, 0.5)]):
            hub.save_model([np.full(2, i)], "mlp", test_accuracy=acc, loss=loss, lr=0.1, note="x")
        hub.save_model([np.ones(2)], "cnn", test_accuracy=0.95, layers=3)
        hub.save_model([np.ones(2)], "cnn", layers=4)  # no accuracy: last when sorting by it
        rows = hub.compare_models("mlp", keys=["test_accuracy", "loss"])
        assert [r["test_accuracy"] for r in rows] == [0.9, 0.8, 0.7]
        assert set(rows[0]) == {"model_name", "time", "id", "adapter", "test_accuracy", "loss"}
        assert hub.find_model(_id=rows[0]["id"])._loss == 0.4
        assert [r["loss"] for r in hub.compare_models("mlp", keys="loss", sort=[("loss", 1)])] == [0.4, 0.5, 0.9]
        everything = hub.compare_models()
        assert [r.get("layers") for r in everything[:2]] == [4, 3]  # newest first by default
        assert list(everything[0])[4:] == ["layers", "test_accuracy", "loss", "lr"]  # numeric fields only
        best = hub.compare_models(keys=["test_accuracy"])
        assert [r["test_accuracy"] for r in best] == [0.95, 0.9, 0.8, 0.7, None]
        assert len(hub.compare_models(limit=2)) == 2 and hub.compare_models("absent") == []
        assert [r["test_accuracy"] for r in hub.compare_models(keys=["test_accuracy"], loss={"$lt": 0.6})] == [0.9, 0.8]

    def test_sklearn_estimator_round_trip_without_pickle(self, hub: TensorHub) -> None:
        pytest.importorskip("skops")
        from sklearn.linear_model import LogisticRegression

        X = np.random.default_rng(0).random((40, 3))
        y = (X[:, 0] > 0.5).astype(int)
        estimator = LogisticRegression().fit(X, y)
        hub.save_model(estimator, "logreg", accuracy=float(estimator.score(X, y)))
        loaded = hub.find_model(model_name="logreg")
        assert loaded.tensorhub_record["adapter"] == "sklearn"
        np.testing.assert_array_equal(loaded.predict(X), estimator.predict(X))

    # ------------------------------------------------------------------ logs
    def test_logs_tutorial(self, hub: TensorHub) -> None:
        hub.save_training_log(accuracy=0.33)
        hub.save_training_log(accuracy=0.44)
        hub.save_validation_log(accuracy=0.5)
        hub.save_testing_log(accuracy=0.6)
        assert hub.delete_training_log(accuracy=0.33) == 1
        assert [r["accuracy"] for r in hub.find_training_logs()] == [0.44]
        assert hub.delete_training_log() == 1
        assert hub.delete_validation_log() == 1
        assert hub.delete_testing_log() == 1
        assert hub.find_training_logs() == hub.find_validation_logs() == hub.find_testing_logs() == []

    def test_batch_logs_sort_and_limit(self, hub: TensorHub) -> None:
        ids = hub.save_training_logs([{"step": i, "loss": 1 / (i + 1)} for i in range(50)])
        assert len(ids) == 50
        rows = hub.find_training_logs(sort=[("step", 1)], limit=3)
        assert [r["step"] for r in rows] == [0, 1, 2]
        assert len(hub.find_training_logs(step={"$gte": 40})) == 10
        assert hub.find_training_logs(limit=1, sort=[("loss", 1)])[0]["step"] == 49
        hub.save_validation_logs([{"epoch": 1}, {"epoch": 2}])
        hub.save_testing_logs([{"epoch": 1}])
        assert len(hub.find_validation_logs()) == 2 and len(hub.find_testing_logs()) == 1

    def test_bad_log_input(self, hub: TensorHub) -> None:
        with pytest.raises(InvalidArgumentError):
            hub.save_training_logs({"loss": 1})
        with pytest.raises(InvalidArgumentError):
            hub.save_training_logs([{"loss": 1}, "not a dict"])
        with pytest.raises(SerializationError):
            hub.save_training_logs([{"loss": 1}, {"loss": _Opaque(2)}])
        with pytest.raises(SerializationError):
            hub.save_training_log(weights=np.ones(3))
        assert hub.find_training_logs() == []  # the batch is all or nothing
        with pytest.raises(InvalidQueryError):
            hub.find_training_logs(loss={"$nosuchop": 1})
        with pytest.raises(InvalidQueryError):
            hub.find_training_logs(sort=[("loss", 2)])

    # ------------------------------------------------------------------ tasks
    def test_task_tutorial_runs_with_hyper_parameters_and_results(self, hub: TensorHub, tmp_path: Path) -> None:
        script = _script(tmp_path, """
            from tensorhub import TensorHub
            hub = TensorHub()  # connects to the store and project the task came from
            test_accuracy = n_units1 / 1000
            hub.save_model({"w": __import__("numpy").ones(2)}, "mlp", test_accuracy=test_accuracy)
        """)
        for n in (800, 600, 400):
            hub.create_task(task_name="mnist", script=script, hyper_parameters=dict(n_units1=n, n_units2=n),
                            saved_result_keys=["test_accuracy"], description=f"{n}-{n}")
        assert hub.check_unfinished_task(task_name="mnist")
        ran = 0
        while hub.run_task(task_name="mnist", sort=[("time", -1)]) and ran < 10:
            ran += 1
        assert ran == 3 and not hub.check_unfinished_task(task_name="mnist")
        tasks = hub.find_tasks("mnist", sort=[("hyper_parameters.n_units1", 1)])
        assert [t["status"] for t in tasks] == ["finished"] * 3
        assert [t["result"]["test_accuracy"] for t in tasks] == [0.4, 0.6, 0.8]
        assert "n_units1 / 1000" in tasks[0]["script"]
        assert hub.find_model(sort=[("test_accuracy", -1)])._test_accuracy == 0.8
        assert hub.run_task(task_name="mnist") is False
        assert hub.delete_tasks(task_name="mnist") == 3

    def test_failing_task_stores_error_and_traceback(self, hub: TensorHub, tmp_path: Path) -> None:
        script = _script(tmp_path, """
            def inner():
                raise ValueError("bad hyper-parameter " + str(lr))
            inner()
        """)
        hub.create_task("fail", script, {"lr": 0.1})
        assert hub.run_task("fail") is True
        (task,) = hub.find_tasks("fail")
        assert task["status"] == "failed"
        assert "ValueError: bad hyper-parameter 0.1" in task["error"]
        assert "inner" in task["traceback"]

    def test_missing_result_key_fails_the_task(self, hub: TensorHub, tmp_path: Path) -> None:
        hub.create_task("noresult", _script(tmp_path, "x = 1\n"), saved_result_keys=["accuracy"])
        hub.run_task("noresult")
        (task,) = hub.find_tasks("noresult")
        assert task["status"] == "failed" and "accuracy" in task["error"]

    def test_bad_task_arguments(self, hub: TensorHub, tmp_path: Path) -> None:
        with pytest.raises(ScriptError, match="does not exist"):
            hub.create_task("t", tmp_path / "missing.py")
        with pytest.raises(ScriptError, match="syntax"):
            hub.create_task("t", _script(tmp_path, "def broken(:\n"))
        good = _script(tmp_path, "x = 1\n", "good.py")
        with pytest.raises(InvalidArgumentError):
            hub.create_task("t", good, hyper_parameters={"not an identifier": 1})
        with pytest.raises(InvalidArgumentError):
            hub.create_task("t", good, saved_result_keys="x")
        with pytest.raises(InvalidArgumentError):
            hub.create_task("", good)
        with pytest.raises(SerializationError):
            hub.create_task("t", good, hyper_parameters={"obj": _Opaque(1)})
        assert hub.find_tasks() == []

    def test_cancel_pending_tasks(self, hub: TensorHub, tmp_path: Path) -> None:
        script = _script(tmp_path, "x = 1\n")
        hub.create_task("c", script)
        hub.create_task("c", script)
        assert hub.cancel_tasks(task_name="c") == 2
        assert hub.run_task("c") is False
        assert [t["status"] for t in hub.find_tasks("c")] == ["cancelled", "cancelled"]
        assert hub.wait_for_tasks("c", timeout=5) and not hub.check_unfinished_task("c")

    # ------------------------------------------------------------------ connection
    def test_str_never_shows_a_password(self, hub: TensorHub) -> None:
        assert "password" not in str(hub).lower() or "***" in str(hub)
        assert hub.project_name in str(hub)

    # ------------------------------------------------------------------ review: API.md conformance
    def test_stamped_and_internal_fields_cannot_be_overridden(self, hub: TensorHub, tmp_path: Path) -> None:
        # every record is stamped with the hub's project and a UTC time (API.md, Records and queries):
        # a user field of the same name would move the record to another project or break the
        # newest-first order, and a kind's own fields (a dataset's schema, a task's status) would
        # be silently replaced; both are refused before anything is written
        script = _script(tmp_path, "x = 1\n")
        for field in ("project_name", "time"):
            with pytest.raises(InvalidArgumentError, match=field):
                hub.save_training_log(loss=1.0, **{field: "other"})
            with pytest.raises(InvalidArgumentError, match=field):
                hub.save_validation_logs([{"loss": 1.0, field: "other"}])
            with pytest.raises(InvalidArgumentError, match=field):
                hub.save_dataset(np.ones(2), "d", **{field: "other"})
            with pytest.raises(InvalidArgumentError, match=field):
                hub.create_task("t", script, **{field: "other"})
        for field in ("schema", "rows", "revision", "blob_refs"):
            with pytest.raises(InvalidArgumentError, match=field):
                hub.save_dataset(np.ones(2), "d", **{field: 1})
        for field in ("status", "result", "attempts_left", "owner"):
            with pytest.raises(InvalidArgumentError, match=field):
                hub.create_task("t", script, **{field: "done"})
        assert hub.find_training_logs() == hub.find_validation_logs() == []
        assert hub.find_dataset_records() == [] and _all_blobs(hub) == [] and hub.find_tasks() == []
        hub.save_training_log(loss=1.0, project_name=hub.project_name)  # the hub's own project is no clash
        assert [r["loss"] for r in hub.find_training_logs()] == [1.0]

    def test_sess_is_ignored_with_a_deprecation_warning_whatever_its_value(self, hub: TensorHub) -> None:
        # API.md: sess= is accepted and ignored with a DeprecationWarning (TensorLayer passed sess=sess,
        # and sess may well be None in a script ported from TensorFlow 1)
        for sess in (object(), None):
            with pytest.warns(DeprecationWarning, match="sess"):
                hub.save_model([np.ones(2)], "m", sess=sess)
            with pytest.warns(DeprecationWarning, match="sess"):
                assert hub.find_model(sess=sess, model_name="m") is not None
        assert "sess" not in hub.find_model(model_name="m").tensorhub_record

    def test_bad_task_queue_arguments_are_clear_errors(self, hub: TensorHub, tmp_path: Path) -> None:
        script = _script(tmp_path, "x = 1\n")
        for bad in ("n_units=800", [1, 2], 5):
            with pytest.raises(InvalidArgumentError, match="hyper_parameters"):
                hub.create_task("t", script, hyper_parameters=bad)
        for bad in (5, [1], {"a": 1}):
            with pytest.raises(InvalidArgumentError, match="saved_result_keys"):
                hub.create_task("t", script, saved_result_keys=bad)
        assert hub.find_tasks() == []
        hub.create_task("t", script)
        for bad in (-1, "10", float("nan")):
            with pytest.raises(InvalidArgumentError, match="timeout"):
                hub.wait_for_tasks("t", timeout=bad)
        with pytest.raises(InvalidArgumentError, match="poll"):
            hub.wait_for_tasks("t", timeout=1, poll=0)
        for bad in (0, -5, "60"):
            with pytest.raises(InvalidArgumentError, match="lease"):
                hub.run_task("t", lease=bad)
        assert [t["status"] for t in hub.find_tasks("t")] == ["pending"]  # a refused run claims nothing

    def test_append_refuses_rows_that_would_misalign_or_overflow(self, hub: TensorHub) -> None:
        # API.md: append_dataset grows the dataset along axis 0; arrays that shared their rows keep
        # sharing them (stream_dataset needs it), and a value the stored dtype cannot hold is an error,
        # never a silent wrap-around (300 stored as 44 in an int8 array)
        x, y = np.arange(20, dtype=np.float32).reshape(10, 2), np.arange(10, dtype=np.int8)
        hub.save_dataset({"x": x, "y": y}, "aligned")
        with pytest.raises(InvalidArgumentError, match="rows"):
            hub.append_dataset("aligned", {"x": x[:3], "y": y[:5]})
        with pytest.raises(InvalidArgumentError, match="int8"):
            hub.append_dataset("aligned", {"x": x[:2], "y": np.array([300, 1])})
        with pytest.raises(InvalidArgumentError, match="float32"):
            hub.append_dataset("aligned", {"x": np.full((1, 2), 1e300), "y": y[:1]})
        (record,) = hub.find_dataset_records("aligned")
        assert record["rows"] == 10 and record["revision"] == 1  # refused appends changed nothing
        assert hub.append_dataset("aligned", {"x": x[:2].astype(np.float64), "y": np.array([100, -100])}) == 12
        got = hub.find_dataset("aligned")
        assert got["y"].dtype == np.int8 and list(got["y"][-2:]) == [100, -100]
        assert len(list(hub.stream_dataset("aligned", batch_size=5))) == 3
        hub.save_dataset([np.ones((4, 2)), np.ones(3)], "ragged")  # no shared rows to keep
        assert hub.append_dataset("ragged", [np.ones((1, 2)), np.ones(2)]) == 5

    # ------------------------------------------------------------------ the error taxonomy (errors.py)
    def test_wrong_calls_raise_the_documented_class_and_builtin(self, hub: TensorHub, tmp_path: Path) -> None:
        """Each representative wrong call raises the class ``errors.py`` documents, and its builtin."""
        hub.create_task("t", _script(tmp_path, "x = 1\n"))
        hub.save_dataset(np.arange(3), "d")
        values = [  # a wrong value: ValueError, not TypeError
            lambda: hub.run_task("t", lease=-1),
            lambda: hub.wait_for_tasks("t", timeout=-1),
            lambda: hub.find_dataset(""),
            lambda: hub.find_training_logs(limit=-1),
            lambda: hub.save_model([np.ones(2)], ""),
            lambda: hub.save_dataset(np.ones(2), "d2", schema="mine"),  # a field tensorhub owns
            lambda: hub.find_model(dataset="not-an-id"),
            lambda: hub.append_dataset("d", np.ones((2, 2))),
        ]
        for call in values:
            with pytest.raises(InvalidArgumentError) as caught:
                call()
            assert isinstance(caught.value, ValueError) and not isinstance(caught.value, TypeError), caught.value
        types = [  # a wrong type: TypeError (and, through InvalidArgumentError, ValueError)
            lambda: hub.run_task("t", lease="60"),
            lambda: hub.find_dataset(3),
            lambda: hub.find_training_logs(limit="3"),
            lambda: hub.save_model([np.ones(2)], 3),
            lambda: hub.save_training_logs([3]),
            lambda: hub.save_dataset(None, "d3"),
        ]
        for call in types:
            with pytest.raises(InvalidArgumentTypeError) as caught:
                call()
            assert isinstance(caught.value, TypeError) and isinstance(caught.value, InvalidArgumentError)
        with pytest.raises(NotFoundError) as missing:
            hub.append_dataset("absent", np.ones(2))
        assert isinstance(missing.value, LookupError)
        assert [t["status"] for t in hub.find_tasks("t")] == ["pending"] and hub.find_dataset_records("d2") == []

    def test_script_errors_are_split_by_cause(self, hub: TensorHub, tmp_path: Path) -> None:
        with pytest.raises(ScriptNotFoundError) as missing:
            hub.create_task("t", tmp_path / "missing.py")
        assert isinstance(missing.value, ScriptError) and isinstance(missing.value, FileNotFoundError)
        with pytest.raises(ScriptSyntaxError) as broken:
            hub.create_task("t", _script(tmp_path, "def broken(:\n"))
        assert isinstance(broken.value, ScriptError) and isinstance(broken.value, ValueError)
        assert not isinstance(broken.value, FileNotFoundError)
        assert hub.find_tasks() == []

    def test_append_that_loses_every_race_is_a_conflict(self, hub: TensorHub,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
        hub.save_dataset(np.arange(4), "raced")
        monkeypatch.setattr(_datasets, "APPEND_RETRIES", 3)
        real = hub.index.find_one_and_update
        lost: list[str] = []

        def always_lost(collection: str, *args: object, **kwargs: object) -> object:
            if collection == _datasets.COLLECTION:  # another writer swapped the record first, every time
                lost.append(collection)
                return None
            return real(collection, *args, **kwargs)

        monkeypatch.setattr(hub.index, "find_one_and_update", always_lost)
        with pytest.raises(ConflictError) as caught:
            hub.append_dataset("raced", np.arange(2))
        assert not isinstance(caught.value, BackendUnavailableError) and len(lost) == 3
        monkeypatch.undo()
        assert list(hub.find_dataset("raced")) == [0, 1, 2, 3]  # nothing was appended

    def test_a_cancelled_task_whose_runner_died_ends_cancelled(self, hub: TensorHub, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
        # API.md: cancel_tasks: running ones stop. A runner that dies (or hands the task back) before
        # it sees the cancel must not leave the task unfinished for ever: check_unfinished_task and
        # wait_for_tasks would never return
        import time

        hub.create_task("c", _script(tmp_path, "x = 1\n"))
        claimed = hub.task_queue.claim({"task_name": "c"}, lease=0.2)  # a runner that then dies
        assert claimed is not None
        assert hub.cancel_tasks(task_name="c") == 1
        time.sleep(0.3)  # its lease runs out
        monkeypatch.setattr(hub.task_queue, "expiry_interval", 0.0)  # the next claim sweeps expired tasks
        assert hub.run_task("c") is False  # nobody runs a cancelled task ...
        assert [t["status"] for t in hub.find_tasks("c")] == ["cancelled"]  # ... and it is over
        assert not hub.check_unfinished_task("c") and hub.wait_for_tasks("c", timeout=1)
        hub.create_task("r", _script(tmp_path, "x = 1\n"))
        claimed = hub.task_queue.claim({"task_name": "r"})
        assert claimed is not None
        hub.cancel_tasks(task_name="r")
        assert hub.task_queue.release(claimed)  # a runner shutting down hands it back unseen
        assert hub.run_task("r") is False
        assert [t["status"] for t in hub.find_tasks("r")] == ["cancelled"]

    def test_stream_is_an_iterator_and_takes_numpy_ints(self, hub: TensorHub) -> None:
        # API.md: stream_dataset(...) -> iterator: next() works on it, as on a generator (TensorLayer's
        # stream design); for-loops and DataLoader still start from the beginning with iter()
        from collections.abc import Iterator

        hub.save_dataset([np.arange(10), np.arange(10) * 2], "s")
        stream = hub.stream_dataset("s", np.int64(4), shuffle=False, epochs=np.int32(1))  # numpy sizes are ints
        assert isinstance(stream, Iterator)
        x, y = next(stream)
        np.testing.assert_array_equal(x, [0, 1, 2, 3])
        np.testing.assert_array_equal(next(stream)[0], [4, 5, 6, 7])
        np.testing.assert_array_equal(next(stream)[1], [16, 18])
        with pytest.raises(StopIteration):
            next(stream)
        assert [len(b[0]) for b in stream] == [4, 4, 2]  # a for-loop reads a whole pass
        for bad in ("a", 1.5, [1, 2]):
            with pytest.raises(InvalidArgumentError, match="seed"):
                hub.stream_dataset("s", 4, seed=bad)
        with pytest.raises(InvalidArgumentError, match="batch_size"):
            hub.stream_dataset("s", True)

    def test_saving_none_as_a_dataset_is_refused(self, hub: TensorHub) -> None:
        # find_dataset returns None for "no such dataset": a saved None could not be told apart
        with pytest.raises(InvalidArgumentError, match="dataset"):
            hub.save_dataset(None, "nothing")
        assert hub.find_dataset_records() == []

    def test_cancel_counts_each_task_once(self, hub: TensorHub, tmp_path: Path) -> None:
        # cancel_tasks returns how many tasks it affected: a running task already asked to stop is not
        # affected again, nor is a finished one
        script = _script(tmp_path, "x = 1\n")
        hub.create_task("c", script)
        hub.create_task("c", script)
        hub.create_task("done", script)
        assert hub.run_task("done", in_process=True) is True
        assert hub.task_queue.claim({"task_name": "c"}) is not None  # one is running
        assert hub.cancel_tasks() == 2
        assert hub.cancel_tasks() == 0
        assert sorted(t["status"] for t in hub.find_tasks()) == ["cancelled", "finished", "running"]

    def test_dataset_containers_and_masks_are_not_silently_changed(self, hub: TensorHub) -> None:
        # API.md: find_dataset returns the same structure with equal values. A namedtuple comes back as
        # a tuple (its class would need pickle), never as a list; a masked array's mask would be dropped
        # by storing its data alone, so it is refused unless allow_pickle=True
        import collections

        Split = collections.namedtuple("Split", "x y")
        hub.save_dataset(Split(np.ones(2), np.zeros(2)), "split")
        got = hub.find_dataset("split")
        assert type(got) is tuple and len(got) == 2
        np.testing.assert_array_equal(got[1], np.zeros(2))
        masked = np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False])
        with pytest.raises(SerializationError, match="mask"):
            hub.save_dataset([np.ones(2), masked], "masked")
        assert hub.find_dataset_records(dataset_name="masked") == []
        hub.save_dataset([np.ones(2), masked], "masked", allow_pickle=True)
        back = hub.find_dataset("masked", allow_pickle=True)[1]
        assert list(np.ma.getmaskarray(back)) == [False, True, False] and back[2] == 3.0

    def test_numpy_scalars_are_stored_as_plain_numbers(self, hub: TensorHub) -> None:
        # logged metrics and tags are often numpy scalars (a float32 mean, an int64 epoch): they are
        # stored as the numbers they are (as MLflow's log_metric takes them), arrays still are not
        hub.save_training_log(loss=np.float32(0.5), epoch=np.int64(3), step=np.uint8(7), ok=np.bool_(True),
                              nested={"acc": [np.float64(0.25), np.int32(1)]})
        (row,) = hub.find_training_logs(epoch=3)
        assert (row["loss"], row["epoch"], row["step"], row["ok"]) == (0.5, 3, 7, True)
        assert type(row["loss"]) is float and type(row["ok"]) is bool and row["nested"] == {"acc": [0.25, 1]}
        hub.save_dataset(np.ones(2), "tagged", version=np.int64(2))
        assert hub.find_dataset("tagged", version=2) is not None
        with pytest.raises(SerializationError):
            hub.save_training_log(weights=np.ones(3))
        with pytest.raises(SerializationError):
            hub.save_training_log(when=np.datetime64("2020-01-01"))
        assert len(hub.find_training_logs()) == 1

    def test_numpy_scalars_in_queries_mean_the_same_everywhere(self, hub: TensorHub) -> None:
        # API.md: queries mean the same on every backend, numpy scalars in them too
        hub.save_training_logs([{"epoch": e, "loss": 1 / (e + 1)} for e in range(5)])
        assert [r["epoch"] for r in hub.find_training_logs(epoch=np.int64(3))] == [3]
        assert sorted(r["epoch"] for r in hub.find_training_logs(epoch={"$in": [np.int32(1), np.int64(2)]})) == [1, 2]
        assert len(hub.find_training_logs(loss={"$lt": np.float32(0.3)})) == 2
        assert hub.delete_training_log(epoch={"$gte": np.uint8(3)}) == 2

    def test_unsupported_top_level_operators_fail_on_every_backend(self, hub: TensorHub) -> None:
        # API.md: queries mean the same on every backend. $expr/$where/$text would run natively on
        # MongoDB only (and $expr slipped through the check on an empty file:// or s3:// collection)
        for query in ({"$expr": {"$gt": ["$n", 1]}}, {"$where": "true"}, {"$text": {"$search": "x"}}):
            with pytest.raises(InvalidQueryError, match="top-level"):
                hub.find_training_logs(**query)
            hub.save_training_log(n=5)
            with pytest.raises(InvalidQueryError, match="top-level"):
                hub.find_training_logs(**query)
            with pytest.raises(InvalidQueryError, match="top-level"):
                hub.delete_training_log(**query)
        assert len(hub.find_training_logs(**{"$comment": "why", "n": 5})) == 3

    def test_task_priority_must_be_a_number(self, hub: TensorHub, tmp_path: Path) -> None:
        # priority orders claims (higher first): a string or NaN would sort apart from every number, silently
        script = _script(tmp_path, "x = 1\n")
        for bad in ("high", None, float("nan"), True):
            with pytest.raises(InvalidArgumentError, match="priority"):
                hub.create_task("p", script, priority=bad)
        assert hub.find_tasks() == []
        hub.create_task("p", script, priority=-1, description="low")
        hub.create_task("p", script, priority=2.5, description="high")
        assert [t["description"] for t in hub.find_tasks("p", sort=[("priority", -1)])] == ["high", "low"]

    def test_append_of_another_kind_of_number_says_so(self, hub: TensorHub) -> None:
        # the refusal names the dtypes, not only "the structure", when the containers do match
        hub.save_dataset([np.arange(4, dtype=np.uint8)], "u")
        with pytest.raises(InvalidArgumentError, match="uint8"):
            hub.append_dataset("u", [np.array([1, 2])])
        assert hub.append_dataset("u", [np.array([1, 2], dtype=np.uint8)]) == 6
