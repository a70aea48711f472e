"""Choosing and opening backends: URIs, the registry, TensorLayer's signature, and clear failures."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

import tensorhub
from tensorhub import TensorHub, registry
from tensorhub.backends.base import BlobStore, IndexStore
from tensorhub.errors import (
    BackendNotInstalledError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidArgumentError,
    TensorHubError,
    UnknownSchemeError,
)
from tensorhub.ownership import OWNER_KEY
from tensorhub.testing.servers import free_port


def test_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(UnknownSchemeError) as info:
        TensorHub("ftp://somewhere/x")
    message = str(info.value)
    for scheme in ("file", "mongodb", "mongomock", "s3"):
        assert scheme in message
    assert isinstance(info.value, TensorHubError) and isinstance(info.value, ValueError)


def test_mongodb_srv_is_served_by_the_mongodb_backend() -> None:
    assert registry.split_scheme("mongodb+srv://cluster.example/db") == "mongodb"
    assert registry.split_scheme("MongoDB://h/db") == "mongodb"
    assert registry.split_scheme("/plain/path") == "file"


def test_missing_dependency_names_the_extra_to_install() -> None:
    registry.register_backend("needsdep", "tensorhub_no_such_module:open_stores", extra="needsdep")
    try:
        with pytest.raises(BackendNotInstalledError, match=r"pip install 'tensorhub\[needsdep\]'"):
            TensorHub("needsdep://x")
    finally:
        registry._registered.pop("needsdep")


def test_register_backend_with_a_callable(tmp_path) -> None:
    opened = []

    def open_stores(uri: str, *, index: bool, blobs: bool) -> registry.Stores:
        opened.append(uri)
        return registry.open_stores(f"file://{tmp_path}", index=index, blobs=blobs)

    tensorhub.register_backend("custom", open_stores)
    try:
        with TensorHub("custom://anything", project_name="p") as hub:
            hub.save_training_log(x=1)
            assert hub.find_training_logs()[0]["x"] == 1
        assert opened == ["custom://anything"]
        assert "custom" in registry.known_schemes()
    finally:
        registry._registered.pop("custom")


def test_entry_point_backends_are_discovered(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    class FakeEntryPoint:
        name = "plugin"
        value = "tensorhub.backends.file:open_stores"

    monkeypatch.setattr(registry, "entry_points", lambda group: [FakeEntryPoint()] if group == "tensorhub.backends" else [])
    assert "plugin" in registry.known_schemes()
    with TensorHub(f"plugin://{tmp_path}", project_name="p") as hub:
        hub.save_training_log(x=2)
        assert len(hub.find_training_logs()) == 1


def test_unreachable_mongodb_fails_fast_with_a_clear_error() -> None:
    port = free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="unreachable"):
        TensorHub(f"mongodb://127.0.0.1:{port}/db", project_name="p")
    assert time.monotonic() - start < 20  # fails within the server-selection timeout, not a long hang


def test_tensorlayer_signature_means_mongodb(mongodb_base: str) -> None:
    host, port = mongodb_base.split("//")[1].split(":")
    with TensorHub(ip=host, port=int(port), dbname="tl_temp", username=None, password="password",
                   project_name="tutorial") as hub:
        assert hub.uri == f"mongodb://{host}:{port}/tl_temp"
        hub.save_dataset([np.ones(3)], "mnist", description="this is a tutorial")
        assert np.array_equal(hub.find_dataset("mnist")[0], np.ones(3))
        assert "password" not in str(hub)


def test_uri_and_tensorlayer_arguments_together_are_refused() -> None:
    with pytest.raises(InvalidArgumentError):
        TensorHub("mongomock://", ip="localhost")


def test_str_redacts_passwords() -> None:
    assert registry.redact("mongodb://user:s3cret@host:27017/db") == "mongodb://user:***@host:27017/db"
    assert registry.redact("file:///data/hub") == "file:///data/hub"
    with TensorHub("mongomock://", project_name="p") as hub:
        assert str(hub) == "TensorHub('mongomock://', project_name='p')"


def test_default_uri_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("TENSORHUB_URI", f"file://{tmp_path}/envstore")
    monkeypatch.setenv("TENSORHUB_PROJECT", "from-env")
    with TensorHub() as hub:
        assert hub.uri == f"file://{tmp_path}/envstore" and hub.project_name == "from-env"
        hub.save_training_log(a=1)
    assert (tmp_path / "envstore" / "index.sqlite").exists()


def test_default_uri_is_the_embedded_store(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("TENSORHUB_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with TensorHub(project_name="p") as hub:
        assert hub.uri == "file://./tensorhub-data"
        hub.save_training_log(a=1)
    assert (tmp_path / "tensorhub-data" / "index.sqlite").exists()


def test_project_name_defaults_to_the_scripts_file_stem(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    # API.md: project_name defaults to the running script's file stem (as TensorLayer did)
    import subprocess
    import sys

    monkeypatch.delenv("TENSORHUB_PROJECT", raising=False)
    script = tmp_path / "mnist_experiment.py"
    script.write_text(f"from tensorhub import TensorHub\n"
                      f"with TensorHub('file://{tmp_path}/store') as hub:\n"
                      "    hub.save_training_log(loss=1.0)\n"
                      "    print(hub.project_name, hub.find_training_logs()[0]['project_name'])\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["mnist_experiment", "mnist_experiment"]
    with TensorHub(f"file://{tmp_path}/store", project_name="mnist_experiment") as hub:
        assert len(hub.find_training_logs()) == 1


def test_bad_connection_arguments_are_clear_errors(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match="path"):
        TensorHub("file://", project_name="p")  # not the current directory, silently
    assert list(tmp_path.iterdir()) == []
    for port in ("abc", -1, 70000, 1.5):
        with pytest.raises(InvalidArgumentError, match="port"):
            TensorHub(ip="localhost", port=port, dbname="temp", project_name="p")


def test_file_uri_on_a_regular_file_is_refused(tmp_path) -> None:
    target = tmp_path / "not-a-dir"
    target.write_text("x")
    with pytest.raises(InvalidArgumentError, match="not a directory"):
        TensorHub(f"file://{target}", project_name="p")


def test_bad_project_name() -> None:
    with pytest.raises(InvalidArgumentError):
        TensorHub("mongomock://", project_name="")


def test_mongomock_stores_are_shared_per_name_in_a_process() -> None:
    with TensorHub("mongomock://", project_name="p") as first, TensorHub("mongomock://", project_name="p") as second:
        first.save_training_log(step=1)
        assert [r["step"] for r in second.find_training_logs()] == [1]
    with TensorHub("mongomock://elsewhere", project_name="p") as other:
        assert other.find_training_logs() == []


def test_incomplete_backends_cannot_be_instantiated() -> None:
    class HalfIndex(IndexStore):
        def insert_many(self, collection, documents):  # type: ignore[override]
            pass

    class HalfBlobs(BlobStore):
        def put(self, key, data):  # type: ignore[override]
            pass

    with pytest.raises(TypeError, match="abstract"):
        HalfIndex()  # type: ignore[abstract]
    with pytest.raises(TypeError, match="abstract"):
        HalfBlobs()  # type: ignore[abstract]


def test_index_and_blobs_from_different_uris(mongodb_base: str, tmp_path) -> None:
    with TensorHub(f"{mongodb_base}/split", project_name="p", blobs=f"file://{tmp_path}/blobs") as hub:
        hub.save_dataset([np.arange(4)], "split")
        assert list((tmp_path / "blobs" / "blobs" / "chunks").iterdir())
        assert np.array_equal(hub.find_dataset("split")[0], np.arange(4))
        assert "blobs=" in str(hub)
        assert hub.delete_datasets() == 1
        assert list(hub.blobs.list("")) == [OWNER_KEY]  # the blob store's owner marker only


class _FailingBlobs(BlobStore):
    """Wraps a blob store and fails the n-th put, as a full disk or dropped connection would."""

    def __init__(self, inner: BlobStore, fail_at: int) -> None:
        self.inner, self.fail_at, self.puts = inner, fail_at, 0

    def put(self, key, data):  # type: ignore[override]
        self.puts += 1
        if self.puts == self.fail_at:
            raise OSError("disk full (simulated)")
        self.inner.put(key, data)

    def get(self, key):  # type: ignore[override]
        return self.inner.get(key)

    def delete(self, key):  # type: ignore[override]
        self.inner.delete(key)

    def list(self, prefix=""):  # type: ignore[override]
        return self.inner.list(prefix)


@pytest.fixture
def failing_hub(store_uri: str) -> Iterator[TensorHub]:
    with TensorHub(store_uri, project_name="p") as hub:
        hub._records.blobs = _FailingBlobs(hub._records.blobs, fail_at=3)
        yield hub


def test_a_failed_save_leaves_nothing_behind(failing_hub: TensorHub) -> None:
    with pytest.raises(OSError):
        failing_hub.save_dataset([np.ones(2), np.ones(3), np.ones(4), np.ones(5)], "partial")
    assert failing_hub.find_dataset_records("partial") == []
    assert list(failing_hub.blobs.list("")) == [OWNER_KEY]
    failing_hub.save_dataset([np.ones(2)], "whole")  # the store still works afterwards
    assert failing_hub.find_dataset("whole") is not None


def test_str_redacts_secrets_in_the_query_string() -> None:
    uri = "s3://bucket/p?endpoint_url=http://127.0.0.1:9000&aws_secret_access_key=s3cret&aws_session_token=tok"
    shown = registry.redact(uri)
    assert "s3cret" not in shown and "tok" not in shown.split("token=")[1]
    assert "endpoint_url=http://127.0.0.1:9000" in shown


def test_tasks_see_the_runners_current_environment(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "env.py"
    script.write_text("import os\nvalue = os.environ.get('TENSORHUB_TEST_LATE_VARIABLE')\n")
    with TensorHub(f"file://{tmp_path}/store", project_name="p") as hub:
        hub.create_task("env", script, saved_result_keys=["value"])
        hub.create_task("env", script, saved_result_keys=["value"])
        hub.run_task("env")  # starts the runner's fork helper with the environment of now
        monkeypatch.setenv("TENSORHUB_TEST_LATE_VARIABLE", "set later")
        hub.run_task("env")
        values = [t["result"]["value"] for t in hub.find_tasks("env", sort=[("finished_at", 1)])]
    assert values == [None, "set later"]
