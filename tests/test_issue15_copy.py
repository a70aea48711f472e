"""Issue 15 item 1: ``tensorhub copy`` / ``hub.copy_to`` copies projects between stores of any backends.

Records keep their ``_id``, ``time``, tags, lineage and task history; blobs go first and the record
last (no destination record ever lacks its bytes); a second run copies only what is missing; dry
runs write nothing; ``since``/``kinds`` filter; a torch model exported with ``example_inputs`` loads
from the copy.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from tensorhub import TensorHub
from tensorhub.cli import main as cli_main
from tensorhub.copying import KINDS, same
from tensorhub.errors import InvalidArgumentError
from tensorhub.records import keeping_time

from conftest import SPLIT_BLOBS, fresh_uri, write_script

torch = pytest.importorskip("torch")

COLLECTIONS = [c for collections in KINDS.values() for c in collections]


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.register_buffer("scale", torch.tensor([2.0, 3.0, 4.0]))

    def forward(self, x: Any) -> Any:
        return torch.relu(self.fc(x)) * self.scale


def _open(uri: str, project: str = "p") -> TensorHub:
    return TensorHub(uri, project_name=project, blobs=SPLIT_BLOBS.get(uri))


def _documents(hub: TensorHub) -> dict[str, list[dict]]:
    return {c: hub.index.find(c, {}, sort=[("_id", 1)]) for c in COLLECTIONS}


def _blob_keys(hub: TensorHub) -> set[str]:
    return {k for k in hub.blobs.list("") if k != "tensorhub-owner.json"}


def _missing_blobs(hub: TensorHub) -> list[str]:
    """Every chunk or record blob a record of the store names that the blob store lacks."""
    missing = []
    for collection in ("datasets", "models"):
        for record in hub.index.find(collection, {}):
            entries = record.get("schema") or record.get("arrays") or []
            names = set(record.get("blob_refs", [])) | {d for e in entries for d in e["chunks"]}
            missing += [f"{record['_id']}: {d}" for d in names if not hub.blobs.exists(f"chunks/{d}")]
    return missing


def _fill(hub: TensorHub, tmp_path: Path) -> dict[str, Any]:
    """One of every record kind in project "p" (and a dataset in project "q"); what to compare later."""
    rng = np.random.default_rng(0)
    x = torch.randn(5, 4)
    net = Net()
    with hub.start_run("interactive-run", lr=0.1) as run:  # lineage: task_id/attempt on logs, models, datasets
        run.log(step=1, loss=0.5)
        run.log(step=2, loss=float("nan"))
        run.log(kind="validation", acc=0.9)
        run.log(kind="testing", acc=0.8)
        hub.save_dataset({"x": rng.random((300, 8)), "y": np.arange(300)}, "chunked", chunk_bytes=4096, split="a")
        hub.save_model(net, "exported", example_inputs=(x,), acc=0.9)
    hub.append_dataset("chunked", {"x": rng.random((7, 8)), "y": np.arange(7)})
    hub.save_dataset([np.arange(10), {"kept": {1, 2, 3}}], "pickled", allow_pickle=True)  # a record blob
    ds = hub.find_dataset_records("chunked")[0]["_id"]
    hub.save_model([rng.random((20, 20)), np.float32(3)], "params", dataset=ds, task=run.id, acc=0.7)
    hub.save_training_logs([{"step": i, "loss": 1.0 / (i + 1)} for i in range(30)])
    hub.save_validation_log(acc=0.95)
    hub.save_testing_log(acc=0.93)
    ok = write_script(tmp_path, "y = x * 2\n", "ok.py")
    bad = write_script(tmp_path, "raise ValueError('boom')\n", "bad.py")
    hub.create_task("done", ok, {"x": 3}, saved_result_keys=["y"])
    assert hub.run_task("done", in_process=True)
    hub.create_task("flaky", bad, {}, retry_on_error=1)  # fails twice: a history of two errors
    assert hub.run_task("flaky", in_process=True) and hub.run_task("flaky", in_process=True)
    hub.create_task("waiting", ok, {"x": 1})
    hub.create_task("stopped", ok, {"x": 1})
    hub.cancel_tasks(task_name="stopped")
    hub.create_task("busy", ok, {"x": 1})
    assert hub.task_queue.claim({"task_name": "busy"}, lease=600) is not None  # running, under a lease
    with TensorHub(hub.uri, project_name="q", blobs=hub.blobs_uri) as q:
        q.save_dataset([np.ones(5)], "other")
    states = sorted(t["status"] for t in hub.find_tasks(run_type="task"))
    assert states == ["cancelled", "failed", "finished", "pending", "running"]
    assert len(hub.find_tasks("flaky")[0]["errors"]) == 2
    return {"x": x, "out": net(x).detach()}


def _check_copy(source: TensorHub, dest_uri: str, expected: dict[str, Any]) -> None:
    """Every record of ``source`` is in ``dest_uri``, equal; arrays equal; the exported model runs the same."""
    with _open(dest_uri) as dest, _open(dest_uri, "q") as q:
        want, got = _documents(source), _documents(dest)
        for collection in COLLECTIONS:
            assert len(got[collection]) == len(want[collection]), collection
            for a, b in zip(want[collection], got[collection]):
                assert same(a, b), (collection, a, b)
        assert _missing_blobs(dest) == []
        for name in ("chunked", "pickled"):
            kw = {"allow_pickle": True} if name == "pickled" else {}
            a, b = source.find_dataset(name, **kw), dest.find_dataset(name, **kw)
            if name == "chunked":
                assert a["x"].shape == (307, 8) and all(np.array_equal(a[k], b[k]) for k in a)
            else:
                assert np.array_equal(a[0], b[0]) and b[1] == {"kept": {1, 2, 3}}
        params = dest.find_model(model_name="params")
        assert all(np.array_equal(u, v) for u, v in zip(source.find_model(model_name="params"), params))
        model = dest.find_model(model_name="exported")
        assert torch.equal(model(expected["x"]), expected["out"])
        assert np.array_equal(q.find_dataset("other")[0], np.ones(5))


def test_item01_copy_file_to_mongodb_to_s3_to_file_keeps_every_record(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    chain = [fresh_uri(b, request, tmp_path_factory) for b in ("file", "mongodb", "s3", "file")]
    with _open(chain[0]) as source:
        expected = _fill(source, tmp_path)
        for here, there in zip(chain, chain[1:]):
            with _open(here) as a, _open(there, "elsewhere") as b:
                report = a.copy_to(b)
            assert not report.conflicts and not report.errors
            assert report.of("p", "logs").records == 36 and report.of("q", "datasets").records == 1
            _check_copy(source, there, expected)
        with _open(chain[-1]) as last:
            run = last.find_tasks("interactive-run")[0]
            assert {r["task_id"] for r in last.find_training_logs(step={"$exists": True}) if "task_id" in r} \
                == {run["_id"]}
            assert last.find_records("models", model_name="exported")[0]["task_id"] == run["_id"]
            assert last.find_tasks("flaky")[0]["errors"] == source.find_tasks("flaky")[0]["errors"]
            # a second copy finds everything there: nothing is written again
            with _open(chain[0]) as a:
                again = a.copy_to(last).total()
            assert (again.records, again.chunks, again.blobs, again.conflicts) == (0, 0, 0, 0)
            assert again.present == sum(len(v) for v in _documents(last).values())


def _small_store(hub: TensorHub, datasets: int = 6, chunks: int = 5) -> None:
    """Datasets of incompressible chunks (one chunk each of 4 KiB rows), and a few logs."""
    rng = np.random.default_rng(1)
    for i in range(datasets):
        hub.save_dataset([rng.random((chunks * 64, 8))], f"d{i}", chunk_bytes=4096)
    hub.save_training_logs([{"step": i} for i in range(5)])


@pytest.mark.parametrize("backend", ["mongodb", "s3", "mongodb+s3"])  # file://: the SIGKILL test below
def test_item01_copy_failing_after_some_blobs_leaves_no_broken_record_and_resumes(
        backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    src_uri, dst_uri, ref_uri = (fresh_uri(b, request, tmp_path_factory) for b in ("file", backend, "file"))
    with _open(src_uri) as source, _open(dst_uri) as dest, _open(ref_uri) as reference:
        _small_store(source)
        source.copy_to(reference)  # uninterrupted
        store_class = type(dest.blobs)
        real_put, puts = store_class.put, []

        def failing_put(self: Any, key: str, data: Any) -> None:
            if key.startswith("chunks/") and len(puts) >= 12:
                raise OSError("injected failure")
            puts.append(key)
            real_put(self, key, data)

        monkeypatch.setattr(store_class, "put", failing_put)
        with pytest.raises(OSError, match="injected"):
            source.copy_to(dest)
        monkeypatch.setattr(store_class, "put", real_put)
        first_records = dest.index.find("datasets", {})
        assert 0 < len(first_records) < 6 and _missing_blobs(dest) == []
        copied_first = {k for k in puts if k.startswith("chunks/")}
        report = source.copy_to(dest).of("p", "datasets")
        assert report.chunks == 30 - len(copied_first)  # only what is missing
        assert report.present == len(first_records) and report.records == 6 - len(first_records)
        assert _documents(dest) == _documents(reference) == _documents(source)
        assert _blob_keys(dest) == _blob_keys(reference)


CHILD = """
import sys, time
from tensorhub import TensorHub
from tensorhub.backends.file import FileBlobStore
put = FileBlobStore.put
def slow_put(self, key, data):
    time.sleep(0.3)
    put(self, key, data)
FileBlobStore.put = slow_put
with TensorHub(sys.argv[1], project_name="p") as a, TensorHub(sys.argv[2], project_name="p") as b:
    a.copy_to(b)
print("done")
"""


def test_item01_copy_killed_mid_way_resumes_to_the_same_store(tmp_path: Path) -> None:
    src, dst, ref = (f"file://{tmp_path / n}" for n in ("src", "dst", "ref"))
    with _open(src) as source:
        _small_store(source, datasets=8)
        source.copy_to(_open(ref))
    child = subprocess.Popen([sys.executable, "-c", CHILD, src, dst], env={**os.environ, "TENSORHUB_PROGRESS": "0"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        with _open(dst) as dest:
            while time.monotonic() < deadline and child.poll() is None:
                # at every look, no record of the destination lacks a chunk
                assert _missing_blobs(dest) == []
                if dest.index.find("datasets", {}):  # records go in one by one, each after its chunks
                    break
                time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else ""  # killed, not done
    with _open(dst) as dest, _open(ref) as reference, _open(src) as source:
        partial = len(dest.index.find("datasets", {}))
        assert 0 < partial < 8 and _missing_blobs(dest) == []
        report = source.copy_to(dest)
        assert report.of("p", "datasets").present == partial
        assert _documents(dest) == _documents(reference)
        assert _blob_keys(dest) == _blob_keys(reference)
        assert all(np.array_equal(a[0], b[0]) for a, b in zip(source.find_all_datasets(sort=[("_id", 1)]),
                                                               dest.find_all_datasets(sort=[("_id", 1)])))


@pytest.fixture
def two_stores(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    yield fresh_uri("file", request, tmp_path_factory), fresh_uri("mongomock", request, tmp_path_factory)


def test_item01_dry_run_writes_nothing_and_counts_what_a_copy_would(tmp_path: Path) -> None:
    src, dst = f"file://{tmp_path / 'src'}", f"file://{tmp_path / 'dst'}"
    with _open(src) as source, _open(dst) as dest:
        _small_store(source, datasets=2)
        dry = source.copy_to(dest, dry_run=True)
        assert not (tmp_path / "dst").exists()  # not even created
        real = source.copy_to(dest)
        for kind in ("datasets", "logs"):
            d, r = dry.of("p", kind), real.of("p", kind)
            assert (d.records, d.chunks) == (r.records, r.chunks) and d.records > 0
            assert d.bytes >= r.bytes  # an upper bound: raw chunks are their array bytes
        source.save_training_log(step=99)
        before = (_documents(dest), _blob_keys(dest))
        dry = source.copy_to(dest, dry_run=True)
        assert dry.of("p", "logs").records == 1 and dry.of("p", "logs").present == 5
        assert (_documents(dest), _blob_keys(dest)) == before


def test_item01_since_and_kinds_filter(two_stores: tuple[str, str]) -> None:
    src, dst = two_stores
    old = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    with _open(src) as source, _open(dst) as dest:
        with keeping_time():
            source.save_training_logs([{"time": old, "step": 0}])
            source.save_dataset([np.ones(3)], "old", time=old)
        source.save_training_logs([{"step": 1}])
        source.save_dataset([np.zeros(3)], "new")
        source.save_model([np.ones(2)], "m")
        source.copy_to(dest, since="2021-01-01", kinds="logs,datasets")
        assert [r["step"] for r in dest.find_training_logs()] == [1]
        assert [r["dataset_name"] for r in dest.find_dataset_records()] == ["new"]
        assert dest.find_records("models") == []
        source.copy_to(dest, kinds=["models"], projects="p")
        assert len(dest.find_records("models")) == 1 and len(dest.find_training_logs()) == 1
        source.copy_to(dest, since=dt.datetime(2019, 1, 1))  # naive: UTC
        assert dest.find_training_logs(step=0)[0]["time"] == old
        with pytest.raises(InvalidArgumentError, match="kinds are"):
            source.copy_to(dest, kinds="dataset")
        with pytest.raises(InvalidArgumentError, match="ISO 8601"):
            source.copy_to(dest, since="yesterday")


def test_item01_a_different_destination_record_is_a_conflict_unless_overwrite(two_stores: tuple[str, str],
                                                                              tmp_path: Path) -> None:
    src, dst = two_stores
    with _open(src) as source, _open(dst) as dest:
        source.save_dataset([np.arange(10)], "grows", chunk_bytes=16)
        source.create_task("t", write_script(tmp_path, "y = 1\n"), {})
        source.copy_to(dest)
        source.append_dataset("grows", [np.arange(3)])
        assert source.run_task("t", in_process=True)
        report = source.copy_to(dest)
        assert len(report.conflicts) == 2 and report.total().records == 0
        assert dest.find_tasks("t")[0]["status"] == "pending" and len(dest.find_dataset("grows")[0]) == 10
        report = source.copy_to(dest, overwrite=True)
        assert report.total().overwritten == 2 and not report.conflicts
        assert _documents(dest) == _documents(source)
        assert np.array_equal(dest.find_dataset("grows")[0], np.r_[np.arange(10), np.arange(3)])
        assert _missing_blobs(dest) == []


def test_item01_source_bytes_are_copied_as_bytes_under_keys_the_repository_derives(
        two_stores: tuple[str, str]) -> None:
    src, dst = two_stores
    with _open(src) as source, _open(dst) as dest:
        source.save_dataset([np.random.default_rng(2).random(1000)], "altered")
        source.save_dataset([np.arange(5)], "good")
        (altered,) = source.find_dataset_records("altered")
        key = f"chunks/{altered['blob_refs'][0]}"
        source.blobs.put(key, b"x" + source.blobs.get(key)[1:])  # damaged in the source
        source.index.update_many("datasets", {"dataset_name": "good"},  # a hand-written reference
                                 {"$push": {"blob_refs": "../../tensorhub-owner"}})
        report = source.copy_to(dest)
        assert report.of("p", "datasets").errors == 1 and "altered" not in str(dest.find_dataset_records())
        assert "damaged" in report.errors[0]
        assert [r["dataset_name"] for r in dest.find_dataset_records()] == ["good"]
        assert all(k.startswith("chunks/") and len(k) == 7 + 64 for k in _blob_keys(dest))


def test_item01_cli_copy(tmp_path: Path) -> None:
    src, dst = f"file://{tmp_path / 'src'}", f"file://{tmp_path / 'dst'}"
    with _open(src) as source:
        _small_store(source, datasets=1)
        with _open(src, "q") as q:
            q.save_training_log(step=1)
    runner = CliRunner()
    result = runner.invoke(cli_main, ["copy", src, dst, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "p datasets: 1 record(s) to copy" in result.output and not (tmp_path / "dst").exists()
    result = runner.invoke(cli_main, ["copy", src, dst, "-p", "q", "--kinds", "logs"])
    assert result.exit_code == 0 and "q logs: 1 record(s) copied" in result.output
    with _open(dst) as dest, _open(dst, "q") as q:
        assert dest.find_records("datasets") == [] and len(q.find_training_logs()) == 1
    result = runner.invoke(cli_main, ["copy", src, dst, "--since", "2000-01-01T00:00:00Z"])
    assert result.exit_code == 0 and "p datasets: 1 record(s) copied" in result.output
    result = runner.invoke(cli_main, ["copy", f"file://{tmp_path / 'nothing'}", dst])
    assert result.exit_code == 1 and "Error" in result.output
    result = runner.invoke(cli_main, ["copy", src, dst, "--kinds", "weights"])
    assert result.exit_code == 1 and "kinds are" in result.output
