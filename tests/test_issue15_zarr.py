"""Issue 15, item 4: datasets readable by zarr, xarray and dask (``hub.open_zarr``, chunk format 2).

A saved dataset (float32 2-D, int64 1-D, random bytes, each with a last partial chunk, appended
to) is opened with ``zarr.open_group``, ``xarray.open_zarr`` and ``dask.array.from_zarr`` on
file://, mongodb:// and s3:// and compared element by element with ``find_dataset``. Records of
chunk format 1 (written as before the issue: raw incompressible chunks, last chunk unpadded) still
load, are served by the zarr view and are rewritten by ``upgrade_datasets``/``tensorhub upgrade``.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

zarr = pytest.importorskip("zarr")
xarray = pytest.importorskip("xarray")
dask_array = pytest.importorskip("dask.array")

from tensorhub import TensorHub  # noqa: E402
from tensorhub.chunks import CHUNK_FORMAT, ChunkWriter, chunk_key  # noqa: E402
from tensorhub.cli import main as cli_main  # noqa: E402
from tensorhub.errors import CorruptDataError, NotFoundError  # noqa: E402
from tensorhub.zarr_view import DatasetStore, ReadOnlyZarrError  # noqa: E402

CHUNK_BYTES = 4000  # small chunks: several per array, the last one partial


def _dataset(rows: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.random((rows, 7), dtype=np.float32),          # 28 B a row: 142 rows a chunk
            "y": np.arange(rows, dtype=np.int64) * 3 - 7,             # 8 B a row: 500 rows a chunk
            "raw": rng.integers(0, 256, (rows, 33), dtype=np.uint8)}  # random bytes: incompressible


def _joined(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _assert_zarr_views_equal(hub: TensorHub, name: str, expected: dict[str, np.ndarray]) -> None:
    loaded = hub.find_dataset(name)
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype and np.array_equal(loaded[key], value)
    store = hub.open_zarr(name).store
    assert isinstance(store, DatasetStore)
    group = zarr.open_group(store, mode="r")
    assert sorted(group.array_keys()) == sorted(expected)
    ds = xarray.open_zarr(store)
    for key, value in expected.items():
        array = group[key]
        assert array.shape == value.shape and array.dtype == value.dtype
        assert np.array_equal(array[...], loaded[key])
        assert np.array_equal(array[17:333], loaded[key][17:333])  # a slice across chunk edges
        assert ds[key].dims[0] == "rows" and np.array_equal(ds[key].values, loaded[key])
        assert np.array_equal(dask_array.from_zarr(store, component=key).compute(), loaded[key])


def test_item04_zarr_xarray_and_dask_read_every_element(task_hub: TensorHub) -> None:
    first, more, again = _dataset(1000, 0), _dataset(61, 1), _dataset(300, 2)
    task_hub.save_dataset(first, "mixed", chunk_bytes=CHUNK_BYTES)
    task_hub.append_dataset("mixed", more)
    task_hub.append_dataset("mixed", again)
    _assert_zarr_views_equal(task_hub, "mixed", _joined(first, more, again))
    # every chunk is a Blosc frame of a whole chunk (the last one padded), the manifest keeps the true length
    record = task_hub.find_dataset_records("mixed")[0]
    for entry in record["schema"]:
        assert entry["chunk_format"] == CHUNK_FORMAT and entry["shape"][0] == 1361
        row_bytes = int(np.prod(entry["shape"][1:], dtype=np.int64)) * np.dtype(entry["dtype"]).itemsize
        for digest in entry["chunks"]:
            frame = task_hub.blobs.get(chunk_key(digest))
            assert int.from_bytes(frame[4:8], "little") == entry["chunk_rows"] * row_bytes


def test_item04_an_incompressible_chunk_is_a_frame_zarr_decodes(task_hub: TensorHub) -> None:
    noise = np.frombuffer(np.random.default_rng(5).bytes(50_000), dtype=np.uint8).reshape(500, 100)
    task_hub.save_dataset([noise], "noise")  # one chunk, stored without compression
    entry = task_hub.find_dataset_records("noise")[0]["schema"][0]
    stored = task_hub.blobs.get(chunk_key(entry["chunks"][0]))
    assert len(stored) == noise.nbytes + 16 and stored[16:] == noise.tobytes()  # a Blosc frame: header + bytes
    group = task_hub.open_zarr("noise")
    assert list(group.array_keys()) == ["0"] and np.array_equal(group["0"][...], noise)
    assert np.array_equal(task_hub.find_dataset("noise")[0], noise)


def test_item04_old_format_records_load_and_are_upgraded(task_hub: TensorHub,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    first, more = _dataset(1000, 3), _dataset(77, 4)
    with monkeypatch.context() as old_writer:  # write as before issue 15 (format 1)
        old_writer.setattr(ChunkWriter, "chunk_format", 1)
        task_hub.save_dataset(first, "old", chunk_bytes=CHUNK_BYTES)
        task_hub.append_dataset("old", more)
    expected = _joined(first, more)
    record = task_hub.find_dataset_records("old")[0]
    assert all("chunk_format" not in entry for entry in record["schema"])
    raw_entry = next(e for e in record["schema"] if e["path"] == "['raw']")
    assert len(task_hub.blobs.get(chunk_key(raw_entry["chunks"][0]))) == 121 * 33  # format 1: raw bytes
    old_chunks = set(record["blob_refs"])

    _assert_zarr_views_equal(task_hub, "old", expected)  # loads, and the zarr view re-encodes on read
    task_hub.append_dataset("old", more)  # an append keeps the array's format
    expected = _joined(first, more, more)
    assert task_hub.upgrade_datasets(dry_run=True) == {"datasets": 1, "arrays": 3, "current": 0}
    assert all("chunk_format" not in e for e in task_hub.find_dataset_records("old")[0]["schema"])

    assert task_hub.upgrade_datasets() == {"datasets": 1, "arrays": 3, "current": 0}
    upgraded = task_hub.find_dataset_records("old")[0]
    assert all(e["chunk_format"] == CHUNK_FORMAT for e in upgraded["schema"])
    assert set(upgraded["blob_refs"]) == {d for e in upgraded["schema"] for d in e["chunks"]}
    assert not any(task_hub.blobs.exists(chunk_key(d)) for d in old_chunks - set(upgraded["blob_refs"]))
    _assert_zarr_views_equal(task_hub, "old", expected)
    assert task_hub.upgrade_datasets() == {"datasets": 0, "arrays": 0, "current": 1}


def test_item04_tensorhub_upgrade_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"file://{tmp_path / 'store'}"
    data = _dataset(400, 6)
    with TensorHub(uri, project_name="p") as hub, monkeypatch.context() as old_writer:
        old_writer.setattr(ChunkWriter, "chunk_format", 1)
        hub.save_dataset(data, "a", chunk_bytes=CHUNK_BYTES)
        hub.save_dataset(data, "b", chunk_bytes=CHUNK_BYTES)
    runner = CliRunner()
    dry = runner.invoke(cli_main, ["upgrade", "--uri", uri, "-p", "p", "--dry-run"])
    assert dry.exit_code == 0 and "would rewrite 2 dataset(s) (6 array(s))" in dry.output, dry.output
    done = runner.invoke(cli_main, ["upgrade", "--uri", uri, "-p", "p", '{"dataset_name": "a"}'])
    assert done.exit_code == 0 and "rewrote 1 dataset(s)" in done.output, done.output
    with TensorHub(uri, project_name="p") as hub:
        formats = {r["dataset_name"]: {e.get("chunk_format", 1) for e in r["schema"]}
                   for r in hub.find_dataset_records()}
        assert formats == {"a": {CHUNK_FORMAT}, "b": {1}}
        for name in "ab":
            assert all(np.array_equal(hub.find_dataset(name)[k], data[k]) for k in data)


def test_item04_writes_through_the_zarr_store_are_refused(task_hub: TensorHub) -> None:
    data = _dataset(300, 7)
    task_hub.save_dataset(data, "ro", chunk_bytes=CHUNK_BYTES)
    group = task_hub.open_zarr("ro")
    store = group.store
    with pytest.raises(ReadOnlyZarrError, match="read-only"):
        group["x"][0] = 1.0
    with pytest.raises(ValueError):  # zarr's own refusal of a writable mode on a read-only store
        zarr.open_group(store, mode="a")
    with pytest.raises(ReadOnlyZarrError):
        store.with_read_only(False)
    zarr.core.sync.sync(_refused_writes(store))
    assert np.array_equal(task_hub.find_dataset("ro")["x"], data["x"])
    assert not store.supports_writes and not store.supports_deletes and store.read_only


async def _refused_writes(store: DatasetStore) -> None:
    from zarr.core.buffer import default_buffer_prototype

    for attempt in (store.set("x/c/0/0", default_buffer_prototype().buffer.from_bytes(b"0")),
                    store.delete("x/zarr.json"), store.delete_dir("x"), store.clear()):
        with pytest.raises(ReadOnlyZarrError):
            await attempt


def test_item04_appends_keep_dedup_and_the_true_length(tmp_path: Path) -> None:
    data = _dataset(650, 8)
    with TensorHub(f"file://{tmp_path / 'store'}", project_name="p") as hub:
        hub.save_dataset(data, "whole", chunk_bytes=CHUNK_BYTES)
        hub.save_dataset({k: v[:50] for k, v in data.items()}, "grown", chunk_bytes=CHUNK_BYTES)
        single = hub.find_dataset_records("grown")[0]["schema"]
        hub.append_dataset("grown", {k: v[50:] for k, v in data.items()})
        whole, grown = (hub.find_dataset_records(n)[0] for n in ("whole", "grown"))
        # the same rows give the same chunks (padded tail included), however they arrived
        assert [e["chunks"] for e in whole["schema"]] == [e["chunks"] for e in grown["schema"]]
        assert all(e["shape"][0] == 650 for e in grown["schema"])
        assert all(s["chunks"][-1] not in e["chunks"] for s, e in zip(single, grown["schema"]))
        hub.save_dataset(data, "again", chunk_bytes=CHUNK_BYTES)  # stored once: no new chunk
        assert set(hub.find_dataset_records("again")[0]["blob_refs"]) == set(whole["blob_refs"])
        _assert_zarr_views_equal(hub, "grown", data)


def test_item04_layout_nested_bare_and_scalar(tmp_path: Path) -> None:
    X = np.random.default_rng(9).random((40, 3))
    with TensorHub(f"file://{tmp_path / 'store'}", project_name="p") as hub:
        hub.save_dataset({"train": [X, np.arange(40)], "note": "text", "lr": np.float32(0.5)}, "nested")
        group = hub.open_zarr("nested")
        assert np.array_equal(group["train/0"][...], X) and np.array_equal(group["train/1"][...], np.arange(40))
        assert group["lr"][()] == np.float32(0.5) and "note" not in group
        assert group.attrs["tensorhub"]["dataset_name"] == "nested"
        hub.save_dataset(X, "bare")
        assert np.array_equal(hub.open_zarr("bare")["data"][...], X)
        with pytest.raises(NotFoundError, match="no dataset"):
            hub.open_zarr("missing")


def test_item04_a_damaged_chunk_is_an_error_through_zarr(tmp_path: Path) -> None:
    with TensorHub(f"file://{tmp_path / 'store'}", project_name="p") as hub:
        hub.save_dataset([np.arange(1000.0)], "d", chunk_bytes=CHUNK_BYTES)
        digest = hub.find_dataset_records("d")[0]["schema"][0]["chunks"][1]
        data = bytearray(hub.blobs.get(chunk_key(digest)))
        data[-1] ^= 0xFF
        hub.blobs.put(chunk_key(digest), bytes(data))
        group = hub.open_zarr("d")
        assert np.array_equal(group["0"][:10], np.arange(10.0))  # other chunks still read
        with pytest.raises(CorruptDataError):
            group["0"][...]


def test_item04_uncompressed_frames_are_the_frames_blosc_writes() -> None:
    """The writer frames incompressible chunks itself (a cached header + the bytes): byte for byte
    what Blosc writes with clevel=0, for sizes on both sides of Blosc's small-buffer flag."""
    from numcodecs import Blosc

    from tensorhub.chunks import _stored_frame

    blosc = Blosc(cname="lz4", clevel=0, shuffle=Blosc.NOSHUFFLE)
    for n in (0, 5, 127, 128, 4000, 1 << 20, (1 << 20) + 3):
        for seed in (1, 2):  # the second of a size uses the cached header
            raw = memoryview(np.random.default_rng(seed).bytes(n))
            assert bytes(_stored_frame(raw)) == bytes(blosc.encode(raw)), n
            if n:  # (numcodecs cannot decode an empty frame; tensorhub reads those without decoding)
                assert bytes(Blosc().decode(bytes(_stored_frame(raw)))) == bytes(raw)


def test_item04_zarr_decodes_the_stored_frames_themselves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``DatasetStore(decoded=False)`` serves the chunk blobs as stored under a ``blosc`` codec: zarr's own
    codec decodes every chunk (compressed, uncompressed, the padded last one), old-format ones re-encoded."""
    first, more = _dataset(700, 10), _dataset(33, 11)
    with TensorHub(f"file://{tmp_path / 'store'}", project_name="p") as hub:
        hub.save_dataset(first, "new", chunk_bytes=CHUNK_BYTES)
        hub.append_dataset("new", more)
        with monkeypatch.context() as old_writer:
            old_writer.setattr(ChunkWriter, "chunk_format", 1)
            hub.save_dataset(first, "old", chunk_bytes=CHUNK_BYTES)
        for name, expected in (("new", _joined(first, more)), ("old", first)):
            store = DatasetStore(hub.blobs, hub.find_dataset_records(name)[0], decoded=False)
            group = zarr.open_group(store, mode="r")
            for key, value in expected.items():
                assert [c["name"] for c in group[key].metadata.to_dict()["codecs"]] == ["bytes", "blosc"]
                assert np.array_equal(group[key][...], value)
            if name == "new":  # the stored bytes themselves
                entry = hub.find_dataset_records(name)[0]["schema"][0]
                frame = zarr.core.sync.sync(store.get("x/c/0/0", zarr.core.buffer.default_buffer_prototype()))
                assert frame.to_bytes() == hub.blobs.get(chunk_key(entry["chunks"][0]))


def test_item04_a_chunk_someone_holds_is_never_read_over(tmp_path: Path) -> None:
    """The store reads chunks into reused buffers: one a caller still holds (the buffer zarr was handed, or
    a view of it) keeps its bytes while other chunks are read; a dropped one is reused for the next read."""
    data = _dataset(1000, 12)
    with TensorHub(f"file://{tmp_path / 'store'}", project_name="p") as hub:
        hub.save_dataset(data, "d", chunk_bytes=CHUNK_BYTES)
        store = hub.open_zarr("d").store
        prototype = zarr.core.buffer.default_buffer_prototype()

        def get(key: str) -> np.ndarray:
            return zarr.core.sync.sync(store.get(key, prototype)).as_numpy_array()

        held = get("x/c/0/0")
        kept = held.copy()
        view = get("x/c/1/0").view(np.float32)[:10]  # only a view of the buffer survives
        kept_view = view.copy()
        for i in range(2, 7):
            get(f"x/c/{i}/0")
        assert np.array_equal(held, kept) and np.array_equal(view, kept_view)
        assert np.array_equal(held.view(np.float32).reshape(-1, 7), data["x"][:len(held) // 28])
        dropped = get("x/c/2/0")
        ref = weakref.ref(dropped)
        del dropped
        gc.collect()  # zarr's sync may keep its last result in a cycle a little longer
        assert get("x/c/3/0") is ref()  # the pool kept the dropped buffer and read the next chunk into it
        assert np.array_equal(hub.open_zarr("d")["x"][...], data["x"])
