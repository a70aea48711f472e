"""Datasets at scale, the parts that need real processes: crashes mid-save, DataLoader workers, progress."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tensorhub import TensorHub

from conftest import TASK_BACKENDS, fresh_uri


@pytest.mark.parametrize("backend", TASK_BACKENDS)
def test_a_crash_in_the_middle_of_a_save_leaves_no_visible_record(backend: str, request: pytest.FixtureRequest,
                                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    uri = fresh_uri(backend, request, tmp_path_factory)
    saver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import numpy as np, sys
        from tensorhub import TensorHub, chunks
        original = chunks.ChunkWriter._store
        count = 0
        def slow_store(self, block):  # announce progress, then let the parent kill us mid-save
            global count
            count += 1
            if count == 3:
                print("started", flush=True)
            if count > 3:
                import time; time.sleep(60)
            return original(self, block)
        chunks.ChunkWriter._store = slow_store
        chunks.IO_THREADS = 1
        hub = TensorHub({uri!r}, project_name="crash")
        hub.save_dataset(np.random.default_rng(0).random((64, 1024)), "big", chunk_bytes=8192)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert saver.stdout.readline().strip() == "started"
        saver.kill()
        saver.wait(10)
    finally:
        saver.kill()
    with TensorHub(uri, project_name="crash") as hub:
        assert hub.find_dataset_records("big") == []
        assert hub.find_dataset("big") is None
        assert len(list(hub.blobs.list("chunks/"))) >= 2  # orphan chunks may remain; no record points at them


def test_stream_is_a_torch_iterable_dataset_with_worker_shares(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, IterableDataset

    n = 999
    with TensorHub(f"file://{tmp_path}/store", project_name="p") as hub:
        hub.save_dataset([np.arange(n * 2, dtype=np.float32).reshape(n, 2), np.arange(n)], "t", chunk_bytes=256)
        stream = hub.stream_dataset("t", batch_size=50, seed=3)
        assert isinstance(stream, IterableDataset)
        loader = DataLoader(stream, batch_size=None, num_workers=2, multiprocessing_context="spawn")
        seen = []
        for x, y in loader:
            assert isinstance(x, torch.Tensor) and torch.equal(x[:, 0], 2 * y.float())
            seen.extend(y.tolist())
        assert sorted(seen) == list(range(n))  # two workers, each its own share, every row once


def test_stream_memory_stays_bounded(tmp_path: Path) -> None:
    import tracemalloc

    rows, width = 20_000, 256  # 20 MB of float32
    with TensorHub(f"file://{tmp_path}/store", project_name="p") as hub:
        hub.save_dataset([np.ones((rows, width), np.float32), np.arange(rows)], "wide", chunk_bytes=256 << 10)
        tracemalloc.start()
        count = 0
        for x, _ in hub.stream_dataset("wide", batch_size=500, seed=0, buffer_chunks=2, prefetch=1):
            count += len(x)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert count == rows
        assert peak < 0.2 * rows * width * 4  # a small fraction of the 20 MB dataset


def test_progress_bars_show_when_interactive(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import numpy as np
        from tensorhub import TensorHub
        hub = TensorHub("file://{tmp_path}/store", project_name="p")
        hub.save_dataset(np.zeros((200, 100)), "bar", chunk_bytes=1000)
        hub.find_dataset("bar")
    """)
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                           env={**__import__("os").environ, "TENSORHUB_PROGRESS": "1"})
    hidden = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "TENSORHUB_PROGRESS": "0"})
    assert "saving bar" in shown.stderr and "loading bar" in shown.stderr
    assert "saving bar" not in hidden.stderr


def test_concurrent_appends_both_land(tmp_path: Path) -> None:
    import threading

    uri = f"file://{tmp_path}/store"
    with TensorHub(uri, project_name="p") as hub:
        hub.save_dataset([np.zeros(10)], "c", chunk_bytes=32)
    errors: list[BaseException] = []

    def append(value: float) -> None:
        try:
            with TensorHub(uri, project_name="p") as h:
                for _ in range(5):
                    h.append_dataset("c", [np.full(3, value)])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(v,)) for v in (1.0, 2.0)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not errors
    with TensorHub(uri, project_name="p") as hub:
        (x,) = hub.find_dataset("c")
        assert len(x) == 40 and (x == 1.0).sum() == 15 and (x == 2.0).sum() == 15


def test_progress_is_shown_only_to_a_person(monkeypatch: pytest.MonkeyPatch) -> None:
    # the default (no TENSORHUB_PROGRESS): a terminal or a notebook shows progress, a pipe, a log file or a
    # batch job does not
    import types

    from tensorhub import progress

    monkeypatch.delenv("TENSORHUB_PROGRESS", raising=False)
    monkeypatch.setitem(sys.modules, "IPython", None)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    assert progress.interactive() is False and progress.progress_bar(total=3).disable
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert progress.interactive() is True
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    kernel = types.SimpleNamespace(get_ipython=lambda: types.SimpleNamespace(kernel=object()))
    monkeypatch.setitem(sys.modules, "IPython", kernel)  # a Jupyter notebook: stderr is no terminal there
    assert progress.interactive() is True
    monkeypatch.setenv("TENSORHUB_PROGRESS", "0")
    assert progress.interactive() is False
