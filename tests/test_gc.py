"""Garbage collection of blobs left by crashed saves, and the freshening that keeps reused chunks.

The store-independent part (what is deleted, what is kept) is in the contract suite
(``test_collect_garbage_deletes_only_old_unreferenced_blobs``); here: ages, which need a
backend whose times a test can move (file://) or a real S3 endpoint (moto), and the CLI.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tensorhub import TensorHub
from tensorhub.cli import main

from conftest import fresh_uri

TWO_DAYS = 2 * 24 * 3600


def _age_every_blob(root: Path, seconds: float) -> None:
    old = time.time() - seconds
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))


def _crash_after_chunks(hub: TensorHub, name: str) -> None:
    """What a save killed after writing its chunks but before its record leaves: the chunks alone."""
    (record,) = hub.find_dataset_records(name)
    hub.index.delete_many("datasets", {"_id": record["_id"]})


def test_a_save_reusing_old_orphan_chunks_keeps_them_from_the_collector(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((2000, 16))
    with TensorHub(f"file://{tmp_path}", project_name="p") as hub:
        hub.save_dataset([x], "crashed", chunk_bytes=64 << 10)
        _crash_after_chunks(hub, "crashed")
        _age_every_blob(tmp_path / "blobs", TWO_DAYS)
        assert hub.collect_garbage(dry_run=True)["chunks"] == 4  # old and unreferenced: collectable

        # a save of the same bytes reuses those chunks; seen by a collector before its record is
        # stored (here: never stored), they must look young, or the save would lose them
        hub.save_dataset([x], "again", chunk_bytes=64 << 10)
        _crash_after_chunks(hub, "again")
        assert hub.collect_garbage() == {"chunks": 0, "record_blobs": 0, "incomplete": 0, "kept_young": 4}
        hub.save_dataset([x], "again", chunk_bytes=64 << 10)
        np.testing.assert_array_equal(hub.find_dataset("again")[0], x)


def test_old_orphans_are_collected_and_young_ones_kept(tmp_path: Path) -> None:
    x = np.arange(4000, dtype=np.int32).reshape(1000, 4)
    with TensorHub(f"file://{tmp_path}", project_name="p") as hub:
        hub.save_dataset([x], "old-crash", chunk_bytes=4000)
        _crash_after_chunks(hub, "old-crash")
        _age_every_blob(tmp_path / "blobs", TWO_DAYS)
        hub.save_dataset([x + 1], "new-crash", chunk_bytes=4000)  # a save "still running": young chunks
        _crash_after_chunks(hub, "new-crash")
        counts = hub.collect_garbage()
        assert counts == {"chunks": 4, "record_blobs": 0, "incomplete": 0, "kept_young": 4}
        assert len(list(hub.blobs.list("chunks/"))) == 4


def test_gc_command(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}"
    with TensorHub(uri, project_name="p") as hub:
        hub.save_dataset([np.ones((10, 2))], "d")
        hub.blobs.put("chunks/" + "cd" * 32, b"orphan")
    runner = CliRunner()
    out = runner.invoke(main, ["gc", "--uri", uri, "--older-than", "0", "--dry-run"])
    assert out.exit_code == 0 and "would delete 1 chunk(s)" in out.output
    out = runner.invoke(main, ["gc", "--uri", uri])
    assert out.exit_code == 0 and "deleted 0 chunk(s)" in out.output and "kept 2 blob(s)" in out.output
    out = runner.invoke(main, ["gc", "--uri", uri, "--older-than", "0"])
    assert out.exit_code == 0 and "deleted 1 chunk(s)" in out.output
    out = runner.invoke(main, ["gc", "--uri", uri, "--older-than", "-1"])
    assert out.exit_code != 0 and "older-than" in out.output
    with TensorHub(uri, project_name="p") as hub:
        assert hub.find_dataset("d")[0].shape == (10, 2)


@pytest.mark.parametrize("backend", ["mongodb", "s3"])
def test_freshen_renews_the_write_time_of_old_blobs(backend: str, request: pytest.FixtureRequest,
                                                     tmp_path_factory: pytest.TempPathFactory,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """On servers a test cannot age a blob, so "old" is lowered to 0 s instead."""
    import tensorhub.backends.mongo
    import tensorhub.backends.s3._blobs

    with TensorHub(fresh_uri(backend, request, tmp_path_factory), project_name="p") as hub:
        hub.blobs.put("chunks/k", b"value")
        (written,) = dict(hub.blobs.list_modified("chunks/")).values()
        time.sleep(1.1)  # S3 times have a resolution of one second
        assert hub.blobs.freshen("chunks/k")
        assert dict(hub.blobs.list_modified("chunks/"))["chunks/k"] == written  # young: left alone
        for module in (tensorhub.backends.mongo, tensorhub.backends.s3._blobs):
            monkeypatch.setattr(module, "FRESH_FOR", dt.timedelta(0))
        assert hub.blobs.freshen("chunks/k") and not hub.blobs.freshen("chunks/absent")
        (renewed,) = dict(hub.blobs.list_modified("chunks/")).values()
        assert renewed >= written + dt.timedelta(seconds=1)
        assert hub.blobs.get("chunks/k") == b"value"
