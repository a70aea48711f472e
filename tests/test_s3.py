"""The ``s3://`` backend against a real S3 endpoint (moto's server over HTTP, driven by boto3).

Covers both layouts (S3 alone; MongoDB index + S3 blobs), conditional-write concurrency across
threads and processes, fail-fast errors, an endpoint going away mid-save, request counts and
caching of the index, and the blob store's multipart, range and batch-delete paths.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import socket
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import numpy as np
import pytest
from bson import ObjectId

from tensorhub import TensorHub

from conftest import fresh_uri
from tensorhub.backends import s3 as s3_backend
from tensorhub.backends.s3 import _compaction as s3_compaction
from tensorhub.errors import BackendUnavailableError, ConfigurationError, NotFoundError
from tensorhub.ownership import OWNER_KEY
from tensorhub.registry import open_stores
from tensorhub.testing.servers import free_port, s3_server

BUCKET = "tensorhub-s3-tests"
logging.getLogger("werkzeug").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server for the session, with the test bucket created."""
    with s3_server() as endpoint:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield endpoint


@pytest.fixture
def raw_s3(s3_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def s3_uri(s3_endpoint: str, prefix: str) -> str:
    return f"s3://{BUCKET}/{prefix}?endpoint_url={s3_endpoint}&region=us-east-1"


def _keys(raw_s3: Any, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in raw_s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        keys.extend(obj["Key"][len(prefix) + 1:] for obj in page.get("Contents", ()))
    return sorted(keys)


class _Calls:
    """Counts the S3 operations a boto3 client sends (``PutObject``, ``GetObject``...)."""

    def __init__(self, client: Any) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        client.meta.events.register("before-call.s3", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        with self._lock:
            self.counts[model.name] += 1

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()


# ------------------------------------------------------------------------------ layouts
def test_s3_alone_holds_index_and_blobs(s3_uri: str, raw_s3: Any, prefix: str) -> None:
    X, y = np.arange(12, dtype=np.float32).reshape(4, 3), np.array([0, 1, 0, 1])
    with TensorHub(s3_uri, project_name="p") as hub:
        hub.save_dataset([X, y], "toy", version="1")
        dataset_blobs = {k for k in _keys(raw_s3, prefix) if k.startswith("blobs/") and k != f"blobs/{OWNER_KEY}"}
        assert dataset_blobs
        hub.save_model({"w": np.ones((2, 2))}, "m", accuracy=0.9)
        hub.save_training_log(epoch=1, loss=0.5)
        X2, y2 = hub.find_dataset("toy", version="1")
        assert np.array_equal(X2, X) and X2.dtype == X.dtype and np.array_equal(y2, y)
        assert hub.find_model(model_name="m", accuracy={"$gt": 0.5}) is not None
        assert [r["loss"] for r in hub.find_training_logs()] == [0.5]
        lazy_X, _ = hub.find_dataset("toy", lazy=True)
        assert np.array_equal(lazy_X[1:3], X[1:3])
    keys = _keys(raw_s3, prefix)
    assert keys and all(k.startswith(("index/", "blobs/")) for k in keys)
    assert any(k.startswith("index/datasets/seg/") for k in keys)
    with TensorHub(s3_uri, project_name="p") as hub:  # a new process-like instance sees it all
        assert hub.delete_datasets() == 1
        assert hub.find_dataset("toy") is None
        assert hub.find_model(model_name="m") is not None
    assert not dataset_blobs & set(_keys(raw_s3, prefix))  # the dataset's blobs went with it


def test_mongodb_index_with_s3_blobs(s3_uri: str, mongodb_base: str, raw_s3: Any, prefix: str) -> None:
    X = np.random.default_rng(0).random((50, 8))
    with TensorHub(f"{mongodb_base}/s3blobs_{prefix.replace('-', '_')}", project_name="p", blobs=s3_uri) as hub:
        assert type(hub.blobs).__name__ == "S3BlobStore" and type(hub.index).__name__ == "MongoIndexStore"
        hub.save_dataset(X, "mixed", split="train")
        assert np.array_equal(hub.find_dataset("mixed", split="train"), X)
        assert [k for k in _keys(raw_s3, prefix) if k.startswith("index/")] == []
        assert any(k.startswith("blobs/") for k in _keys(raw_s3, prefix))
        assert hub.delete_datasets(dataset_name="mixed") == 1
        assert _keys(raw_s3, prefix) == [f"blobs/{OWNER_KEY}"]  # the blob store's owner marker stays


def test_uri_options_and_redaction(s3_endpoint: str, prefix: str) -> None:
    secret = "very-secret-key-123"
    uri = (f"s3://{BUCKET}/{prefix}?endpoint_url={s3_endpoint}&region=us-east-1"
           f"&aws_access_key_id=testing&aws_secret_access_key={secret}&aws_session_token=tok-456")
    stores = open_stores(uri)
    try:
        for store in (stores.index, stores.blobs):
            assert secret not in store.uri and "tok-456" not in store.uri
            assert "aws_secret_access_key=***" in store.uri and s3_endpoint in store.uri
        stores.blobs.put("k", b"v")
        assert stores.blobs.get("k") == b"v"
    finally:
        stores.index.close()
        stores.blobs.close()
    location = s3_backend.parse_uri("s3://bkt/a/b/?region=eu-west-1&profile=dev")
    assert (location.bucket, location.prefix, location.options) == ("bkt", "a/b/", {"region": "eu-west-1",
                                                                                      "profile": "dev"})
    assert s3_backend.parse_uri("s3://bkt").prefix == ""
    with pytest.raises(ConfigurationError, match="unknown s3:// option"):
        open_stores(f"s3://{BUCKET}/x?endpont_url={s3_endpoint}&aws_secret_access_key={secret}")
    with pytest.raises(ConfigurationError) as info:
        open_stores(f"s3://{BUCKET}/x?endpont_url=1&aws_secret_access_key={secret}")
    assert secret not in str(info.value)


# ------------------------------------------------------------------------------ fail fast
def test_missing_bucket_fails_fast_with_advice(s3_endpoint: str) -> None:
    start = time.monotonic()
    with pytest.raises(ConfigurationError, match="does not exist.*create it"):
        TensorHub(f"s3://no-such-bucket-here/p?endpoint_url={s3_endpoint}", project_name="p")
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("layout", ["s3", "mongodb+s3"])
def test_unreachable_endpoint_fails_fast(layout: str, mongodb_base: str, s3_endpoint: str) -> None:
    dead = f"s3://{BUCKET}/p?endpoint_url=http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="unreachable"):
        if layout == "s3":
            TensorHub(dead, project_name="p")
        else:
            TensorHub(f"{mongodb_base}/unreach", project_name="p", blobs=dead)
    assert time.monotonic() - start < 5


def test_missing_credentials_is_a_configuration_error(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    start = time.monotonic()
    with pytest.raises(ConfigurationError, match="AWS_ACCESS_KEY_ID"):
        open_stores(f"s3://{BUCKET}/p?endpoint_url={s3_endpoint}")
    with pytest.raises(ConfigurationError, match="profile"):
        open_stores(f"s3://{BUCKET}/p?endpoint_url={s3_endpoint}&profile=nobody")
    assert time.monotonic() - start < 5


def test_botocore_errors_are_translated() -> None:
    def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
        return botocore.exceptions.ClientError(
            {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    cases = [(client_error("AccessDenied", 403), BackendUnavailableError, "credentials"),
             (client_error("InvalidAccessKeyId", 403), BackendUnavailableError, "credentials"),
             (client_error("NoSuchBucket", 404), ConfigurationError, "does not exist"),
             (client_error("NoSuchKey", 404), NotFoundError, "missing"),
             (client_error("SlowDown", 503), BackendUnavailableError, "SlowDown"),
             (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), BackendUnavailableError,
              "unreachable"),
             (botocore.exceptions.NoCredentialsError(), ConfigurationError, "credentials")]
    for error, expected, words in cases:
        with pytest.raises(expected, match=words), s3_backend.translate_errors("s3://b/p", key="k"):
            raise error


# ------------------------------------------------------------------------------ index: cost and cache
def test_ten_thousand_log_rows_are_one_put_and_query_in_seconds(s3_uri: str) -> None:
    rows = [{"step": i, "loss": 1.0 / (i + 1), "phase": "warmup" if i < 1000 else "main"} for i in range(10_000)]
    with TensorHub(s3_uri, project_name="logs") as hub:
        calls = _Calls(hub.index._conn.client)
        start = time.monotonic()
        ids = hub.save_training_logs(rows)
        saved = time.monotonic() - start
        assert len(ids) == 10_000
        assert calls.counts["PutObject"] == 1  # one segment for the whole batch
        start = time.monotonic()
        found = hub.find_training_logs(step={"$gte": 9_990}, sort=[("step", 1)])
        queried = time.monotonic() - start
        assert [r["step"] for r in found] == list(range(9_990, 10_000))
        assert len(hub.find_training_logs(phase="warmup", loss={"$lt": 0.01})) == 900  # i >= 100
        calls.reset()
        assert len(hub.find_training_logs(limit=5)) == 5
        assert calls.counts["GetObject"] == 0  # the segment is cached: only LISTs
    with TensorHub(s3_uri, project_name="logs") as cold:  # a fresh instance downloads it once
        calls = _Calls(cold.index._conn.client)
        start = time.monotonic()
        assert len(cold.find_training_logs(step={"$lt": 10})) == 10
        cold_query = time.monotonic() - start
        assert calls.counts["GetObject"] == 1
        assert cold.delete_training_log(phase="warmup") == 1000
        assert len(cold.find_training_logs()) == 9000
    assert saved < 10 and queried < 5 and cold_query < 5, (saved, queried, cold_query)


def test_updates_and_deletes_are_seen_by_other_instances(s3_uri: str, raw_s3: Any, prefix: str) -> None:
    a = open_stores(s3_uri, blobs=False).index
    b = open_stores(s3_uri, blobs=False).index
    try:
        docs = [{"_id": ObjectId(), "i": i, "tags": []} for i in range(6)]
        a.insert_many("c", docs)
        assert b.update_many("c", {"i": {"$lt": 3}}, {"$inc": {"i": 100}, "$push": {"tags": "b"}}) == 3
        assert sorted(d["i"] for d in a.find("c", {})) == [3, 4, 5, 100, 101, 102]
        got = a.find_one_and_update("c", {"i": {"$gte": 100}}, {"$set": {"x": 1}}, sort=[("i", -1)])
        assert got["i"] == 102 and got["x"] == 1 and got["tags"] == ["b"]
        assert b.find_one("c", {"x": 1})["_id"] == docs[2]["_id"]
        assert b.delete_many("c", {"i": {"$lt": 100}}) == 3
        assert a.count("c", {}) == 3
        assert a.delete_many("c", {}) == 3
        assert a.find("c", {}) == [] and b.find("c", {}) == []
        keys = _keys(raw_s3, prefix)
        assert not any("/seg/" in k for k in keys)  # a dead segment's object is removed at once
        assert all("/state/" in k for k in keys)  # its state stays as a tombstone for late writers
        a.insert_many("c", [{"_id": ObjectId(), "i": 7}])
        assert [d["i"] for d in b.find("c", {})] == [7]
    finally:
        a.close()
        b.close()


def test_dead_tombstones_are_swept_after_the_grace_period(s3_uri: str, raw_s3: Any, prefix: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    index = open_stores(s3_uri, blobs=False).index
    try:
        for i in range(3):
            index.insert_many("c", [{"_id": ObjectId(), "i": i}])
        assert index.delete_many("c", {}) == 3
        assert len(_keys(raw_s3, prefix)) == 3
        monkeypatch.setattr(s3_compaction, "DEAD_STATE_GRACE", timedelta(seconds=-60))
        assert index.delete_many("c", {}) == 0
        assert _keys(raw_s3, prefix) == []
    finally:
        index.close()


def test_a_cas_write_whose_reply_was_lost_is_recognised(s3_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    index = open_stores(s3_uri, blobs=False).index
    try:
        index.insert_many("c", [{"_id": ObjectId(), "n": 0}])
        real = index._conn.put_if
        lost = []

        def put_then_lose_reply(key: str, body: bytes, etag: str | None) -> str | None:
            result = real(key, body, etag)
            if "/state/" in key and not lost:
                lost.append(key)
                return None  # as if the reply never came and the retry hit 412
            return result

        monkeypatch.setattr(index._conn, "put_if", put_then_lose_reply)
        assert index.update_many("c", {}, {"$inc": {"n": 1}}) == 1
        assert lost and index.find_one("c", {})["n"] == 1  # applied exactly once
    finally:
        index.close()


def test_an_insert_that_fails_after_landing_is_rolled_back(s3_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    index = open_stores(s3_uri, blobs=False).index
    try:
        real = index._conn.put_if

        def put_then_fail(key: str, body: bytes, etag: str | None) -> str | None:
            real(key, body, etag)  # the request lands...
            raise BackendUnavailableError("...but the reply is lost")

        monkeypatch.setattr(index._conn, "put_if", put_then_fail)
        with pytest.raises(BackendUnavailableError):
            index.insert_many("c", [{"_id": ObjectId(), "i": 1}])
        monkeypatch.setattr(index._conn, "put_if", real)
        assert index.find("c", {}) == []
        assert open_stores(s3_uri, blobs=False).index.find("c", {}) == []
    finally:
        index.close()


# ------------------------------------------------------------------------------ index: concurrency
def test_sixteen_threads_race_for_one_document(s3_uri: str) -> None:
    stores = [open_stores(s3_uri, blobs=False).index for _ in range(16)]
    try:
        doc_id = ObjectId()
        stores[0].insert_many("tasks", [{"_id": doc_id, "status": "pending", "n": 0}])
        winners: list[int] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(16)

        def race(i: int) -> None:
            try:
                barrier.wait(timeout=30)
                got = stores[i].find_one_and_update("tasks", {"_id": doc_id, "status": "pending"},
                                                    {"$set": {"status": "running", "owner": i}})
                if got is not None:
                    winners.append(i)
                for _ in range(3):  # then contend on a counter: no increment may be lost
                    stores[i].find_one_and_update("tasks", {"_id": doc_id}, {"$inc": {"n": 1}})
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=race, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert len(winners) == 1
        final = stores[5].find_one("tasks", {"_id": doc_id})
        assert final["owner"] == winners[0] and final["status"] == "running" and final["n"] == 48
    finally:
        for store in stores:
            store.close()


# 40 tasks, each a child process that opens the store and logs a row (its run's digest updated too):
# the claims race enough; tests/test_tasks_concurrency.py races 4 runners over 150 s3 tasks as well
N_TASKS, N_RUNNERS = 20, 4  # child-process tasks on moto: ~2 s each under the suite's load


def _runner(uri: str, deadline_s: float, results: Any) -> None:
    """Claim and run tasks until none is left (bounded by count and time); report how many ran."""
    ran, start = 0, time.monotonic()
    with TensorHub(uri, project_name="conc") as hub:
        while ran <= N_TASKS and time.monotonic() - start < deadline_s:
            if not hub.run_task("conc"):
                break
            ran += 1
    results.put(ran)


@pytest.mark.slow
def test_four_processes_claim_each_task_exactly_once(s3_uri: str, tmp_path: Path) -> None:
    script = tmp_path / "task.py"
    script.write_text(textwrap.dedent("""
        from tensorhub import TensorHub
        TensorHub().save_training_log(task_index=index)
        doubled = index * 2
    """))
    with TensorHub(s3_uri, project_name="conc") as hub:
        for i in range(N_TASKS):
            hub.create_task("conc", script, {"index": i}, saved_result_keys=["doubled"])
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        runners = [ctx.Process(target=_runner, args=(s3_uri, 240.0, results)) for _ in range(N_RUNNERS)]
        for runner in runners:
            runner.start()
        try:
            counts = [results.get(timeout=300) for _ in runners]
        finally:
            for runner in runners:
                runner.join(timeout=60)
                if runner.is_alive():
                    runner.terminate()
        assert sum(counts) == N_TASKS
        tasks = hub.find_tasks("conc")
        assert len(tasks) == N_TASKS
        assert all(t["status"] == "finished" and t["attempts"] == 1 for t in tasks)
        assert all(t["result"]["doubled"] == 2 * t["hyper_parameters"]["index"] for t in tasks)
        assert Counter(r["task_index"] for r in hub.find_training_logs()) == Counter(range(N_TASKS))
        assert len({t["owner"]["pid"] for t in tasks}) > 1  # the work really was shared


# ------------------------------------------------------------------------------ outages
class _Proxy:
    """A TCP proxy in front of the S3 endpoint that can be cut like a network outage."""

    def __init__(self, target: str, cut_after_bytes: int | None = None) -> None:
        self.target_port = int(target.rsplit(":", 1)[1])
        self.cut_after = cut_after_bytes
        self.sent = 0
        self.cut_done = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        deadline = time.monotonic() + 300
        while not self.cut_done.is_set() and time.monotonic() < deadline:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                if self.cut_done.is_set():  # cut while this one was being accepted
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        deadline = time.monotonic() + 300
        while not self.cut_done.is_set() and time.monotonic() < deadline:
            try:
                data = src.recv(1 << 16)
                if not data:
                    break
                if upstream:
                    with self._lock:
                        self.sent += len(data)
                        over = self.cut_after is not None and self.sent > self.cut_after
                    if over:
                        self.cut()
                        return
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        with self._lock:
            self.cut_done.set()
            sockets, self._sockets = self._sockets, []
        self._listener.close()
        for s in sockets:  # shutdown wakes a pump blocked in recv(); a bare close() would not
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


def _assert_no_record_points_at_missing_blobs(hub: TensorHub) -> None:
    """Every dataset record the index holds loads in full (a missing blob would raise)."""
    records = hub.index.find("datasets", {})
    loaded = hub.find_all_datasets()
    assert len(loaded) == len(records)


@pytest.mark.parametrize("layout, cut", [("s3", "after-first-blob"), ("s3", "after-all-blobs"),
                                         ("s3", "mid-transfer"), ("mongodb+s3", "after-first-blob"),
                                         ("mongodb+s3", "mid-transfer")])
def test_endpoint_going_away_mid_save_leaves_no_dangling_record(
        layout: str, cut: str, s3_endpoint: str, mongodb_base: str, prefix: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = _Proxy(s3_endpoint, cut_after_bytes=12 << 20 if cut == "mid-transfer" else None)
    through_proxy = f"s3://{BUCKET}/{prefix}?endpoint_url={proxy.endpoint}&read_timeout=10"
    direct = f"s3://{BUCKET}/{prefix}?endpoint_url={s3_endpoint}"
    mongo = f"{mongodb_base}/outage_{prefix.replace('-', '_')}"

    def open_hub(s3_uri: str) -> TensorHub:
        if layout == "s3":
            return TensorHub(s3_uri, project_name="p")
        return TensorHub(mongo, project_name="p", blobs=s3_uri)

    big = np.random.default_rng(1).random((3 << 20) // 8 * 8).reshape(-1, 8)  # 24 MiB: several big requests
    small = np.arange(10)
    with open_hub(through_proxy) as hub:
        if cut != "mid-transfer":
            real_put, done = hub.blobs.put, []

            def put_then_cut(key: str, data: Any) -> None:
                real_put(key, data)
                done.append(key)
                if cut == "after-first-blob" or len(done) == 2:
                    proxy.cut()

            monkeypatch.setattr(hub.blobs, "put", put_then_cut)
        start = time.monotonic()
        with pytest.raises(BackendUnavailableError):
            hub.save_dataset([small, big] if cut == "mid-transfer" else [small, small + 1], "doomed")
        assert time.monotonic() - start < 30
        assert proxy.cut_done.is_set()
    with open_hub(direct) as hub:  # the endpoint is back: what does the store hold?
        assert hub.find_dataset("doomed") is None
        assert hub.index.find("datasets", {}) == []
        _assert_no_record_points_at_missing_blobs(hub)
        hub.save_dataset([small, small], "fine")  # and it works again
        assert np.array_equal(hub.find_dataset("fine")[0], small)
        _assert_no_record_points_at_missing_blobs(hub)


# ------------------------------------------------------------------------------ blobs
def test_blob_store_multipart_ranges_and_batches(s3_uri: str, raw_s3: Any, prefix: str) -> None:
    blobs = open_stores(s3_uri, index=False).blobs
    try:
        calls = _Calls(blobs._conn.client)
        data = os.urandom(20 << 20)
        blobs.put("big/bytes", data)
        assert calls.counts["CreateMultipartUpload"] == 1 and calls.counts["UploadPart"] == 3
        blobs.put("big/stream", _Chunks(data))  # a non-seekable stream
        calls.reset()
        assert blobs.get("big/bytes") == data and blobs.get("big/stream") == data
        assert calls.counts["GetObject"] == 6  # 3 ranged parts each, the last two in parallel
        assert blobs.get_range("big/bytes", (8 << 20) - 5, 10) == data[(8 << 20) - 5:(8 << 20) + 5]
        assert blobs.get_range("big/bytes", len(data) - 3) == data[-3:]
        assert blobs.get_range("big/bytes", len(data)) == b""
        assert blobs.get_range("big/bytes", 0, 0) == b""
        with pytest.raises(NotFoundError):
            blobs.get_range("nope", 0, 10)
        blobs.put("empty", b"")
        assert blobs.get("empty") == b"" and blobs.exists("empty")
        with blobs.open("big/bytes") as stream:
            assert stream.read(100) == data[:100]
        many = [f"many/{i:04d}" for i in range(1_050)]
        list(blobs._conn.executor.map(lambda k: blobs.put(k, b"x"), many))
        assert sorted(blobs.list("many/")) == many  # two LIST pages
        calls.reset()
        assert blobs.delete_prefix("many/") == 1_050
        assert calls.counts["DeleteObjects"] == 2  # batches of 1,000
        assert list(blobs.list("many/")) == []
        assert sorted(_keys(raw_s3, prefix)) == ["blobs/big/bytes", "blobs/big/stream", "blobs/empty"]
    finally:
        blobs.close()


class _Chunks:
    """A read-only, non-seekable stream over ``data``."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size is None or size < 0 else self._pos + size
        chunk = self._data[self._pos:end]
        self._pos += len(chunk)
        return chunk

    def readable(self) -> bool:
        return True


def test_closed_store_says_so(s3_uri: str) -> None:
    stores = open_stores(s3_uri)
    stores.index.close()
    stores.blobs.put("still", b"open")  # the blob store shares the client and is still open
    stores.blobs.close()
    stores.blobs.close()  # twice is fine
    with pytest.raises(BackendUnavailableError, match="closed"):
        stores.blobs.get("still")
    with pytest.raises(BackendUnavailableError, match="closed"):
        stores.index.find("c", {})


def test_a_forked_child_gets_its_own_s3_client_and_thread_pool(request: pytest.FixtureRequest,
                                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    """A forked process (a DataLoader worker reading a lazy dataset, a multiprocessing fork) must not
    share the parent's pooled sockets (the two would read each other's replies) nor its dead pool."""
    uri = fresh_uri("s3", request, tmp_path_factory)
    with TensorHub(uri, project_name="p") as hub:
        hub.save_dataset([np.arange(1000)], "d", chunk_bytes=1024)
        connection = hub.blobs._conn  # the S3Connection the blob store shares with the index
        parent_client = connection.client
        connection.map(len, ["ab", "c"])  # the parent's thread pool exists
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, then leave without running the parent's exit handlers
            ok = 0
            try:
                own = connection.client is not parent_client and connection.client is connection.client
                data = hub.find_dataset("d")[0]
                ok = int(own and np.array_equal(data, np.arange(1000)) and connection.map(len, ["ab", "c"]) == [2, 1])
            finally:
                os.write(write, str(ok).encode())
                os._exit(0)
        os.close(write)
        try:
            answer = os.read(read, 8)
        finally:
            os.close(read)
            os.waitpid(pid, 0)
        assert answer == b"1"
        assert connection.client is parent_client  # the parent keeps its own
