"""Issue 16 item 3: ``stream_dataset`` under DDP (torch.distributed ranks x DataLoader workers).

Every rank yields the same number of batches (else DDP's all-reduce hangs), the ranks' shares of
an epoch make up the dataset (exactly once when ``rows`` divides by ``world_size``; padded or cut
as documented otherwise), and all ranks agree on the seed. The DDP test starts two real processes
on the gloo backend (CPU, rendezvous through a file, sockets on the loopback interface), each
with a two-worker ``DataLoader``, on ``file://`` and ``s3://``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import fresh_uri
from tensorhub import TensorHub
from tensorhub import streaming
from tensorhub.errors import ConfigurationError, InvalidArgumentError, InvalidArgumentTypeError

torch = pytest.importorskip("torch")
SRC = Path(__file__).resolve().parent.parent / "src"
EVEN, ODD = 96, 101  # rows: divides by 2 ranks, and does not


def _save(hub: TensorHub, name: str, rows: int) -> None:
    # 16 rows per chunk of x: several blocks, so ranks and workers split inside and across chunks
    hub.save_dataset({"id": np.arange(rows), "x": np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)},
                     name, chunk_bytes=256)


# Batch sizes give each of a rank's two workers the same number of batches per epoch, so the
# DataLoader's round-robin over workers keeps epoch 0's batches before epoch 1's in what a rank sees.
RANK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch.distributed as dist
    from torch.utils.data import DataLoader
    from tensorhub import TensorHub

    rendezvous, rank, out, uris = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    runs = {"even": ("even", 12, {"seed": 5}), "even_again": ("even", 12, {"seed": 5}),
            "pad": ("odd", 13, {}), "drop": ("odd", 12, {"seed": 5, "drop_last": True})}
    results = {}
    for uri in uris:  # one job for every backend: starting processes that import torch is the slow part
        with TensorHub(uri, project_name="ddp") as hub:
            for name, (dataset, batch_size, options) in runs.items():
                stream = hub.stream_dataset(dataset, batch_size=batch_size, epochs=2, **options)
                loader = DataLoader(stream, batch_size=None, num_workers=2)
                batches = [[int(i) for i in batch["id"]] for batch in loader]
                results.setdefault(uri, {})[name] = {
                    "len": len(stream), "batches": batches, "seed": stream.seed, "rank": stream.rank,
                    "world_size": stream.world_size}
    dist.barrier()
    dist.destroy_process_group()
    with open(out, "w") as f:
        json.dump(results, f)
    os._exit(0)  # skips torch's interpreter teardown (seconds), nothing left to flush
""")


def _run_ranks(uris: list[str], tmp_path: Path, timeout: float = 150.0) -> list[dict]:
    """Run RANK_SCRIPT as ranks 0 and 1 over ``uris``; their results, or a failure with their stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env.update(PYTHONPATH=os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]), GLOO_SOCKET_IFNAME="lo",
               MASTER_ADDR="127.0.0.1", TENSORHUB_PROGRESS="0")
    outs = [tmp_path / f"rank{r}.json" for r in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(tmp_path / "rendezvous"), str(r),
                               str(outs[r]), *uris], env=env, stderr=subprocess.PIPE, text=True) for r in range(2)]
    deadline = time.monotonic() + timeout
    try:
        errors = [p.communicate(timeout=max(1.0, deadline - time.monotonic()))[1] for p in procs]
    finally:
        for p in procs:  # a rank that failed leaves the other waiting in a collective
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert all(p.returncode == 0 for p in procs), "\n".join(e[-3000:] for e in errors)
    return [json.loads(out.read_text()) for out in outs]


DDP_BACKENDS = ["file", "s3"]


@pytest.fixture(scope="module")
def ddp_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """backend -> (its store's URI, what ranks 0 and 1 saw there): one 2-process job for all backends."""
    uris = {backend: fresh_uri(backend, request, tmp_path_factory) for backend in DDP_BACKENDS}
    for uri in uris.values():
        with TensorHub(uri, project_name="ddp") as hub:
            _save(hub, "even", EVEN)
            _save(hub, "odd", ODD)
    ranks = _run_ranks(list(uris.values()), tmp_path_factory.mktemp("ddp"))
    return {backend: (uri, [r[uri] for r in ranks]) for backend, uri in uris.items()}


def _epochs(run: dict) -> list[list[int]]:
    """A rank's ids per epoch (the run has 2 epochs of len // 2 batches)."""
    per_epoch = run["len"] // 2
    return [sum(run["batches"][e * per_epoch:(e + 1) * per_epoch], []) for e in range(2)]


@pytest.mark.parametrize("backend", DDP_BACKENDS)
def test_item03_ddp_two_ranks_two_workers_share_every_epoch(ddp_runs: dict[str, tuple], backend: str) -> None:
    ddp_uri, ranks = ddp_runs[backend]
    assert [r["even"]["rank"] for r in ranks] == [0, 1] and {r["even"]["world_size"] for r in ranks} == {2}
    for name, batches_per_epoch in (("even", 4), ("pad", 4), ("drop", 4)):
        for r in ranks:  # len(stream) is what the rank yields, the same on every rank
            assert r[name]["len"] == len(r[name]["batches"]) == 2 * batches_per_epoch, name
    # N divides by the ranks: every row exactly once per epoch across ranks and workers
    for e in range(2):
        assert sorted(_epochs(ranks[0]["even"])[e] + _epochs(ranks[1]["even"])[e]) == list(range(EVEN))
    assert _epochs(ranks[0]["even"])[0] != _epochs(ranks[0]["even"])[1]  # each epoch its own order
    assert all(r["even_again"]["batches"] == r["even"]["batches"] for r in ranks)  # same seed, same batches
    # the rank's share is the one rank= of the process group names (what explicit rank= gives)
    with TensorHub(ddp_uri, project_name="ddp") as hub:
        for rank, r in enumerate(ranks):
            alone = list(hub.stream_dataset("even", batch_size=12, seed=5, epochs=2, rank=rank, world_size=2))
            assert [sorted(ids) for ids in _epochs(r["even"])] == [
                sorted(int(i) for b in alone[e * 4:(e + 1) * 4] for i in b["id"]) for e in range(2)]
    # seed=None: rank 0's random seed, broadcast; the short rank is padded with one row again
    assert ranks[0]["pad"]["seed"] == ranks[1]["pad"]["seed"]
    for e in range(2):
        ids = _epochs(ranks[0]["pad"])[e] + _epochs(ranks[1]["pad"])[e]
        assert set(ids) == set(range(ODD)) and len(ids) == 2 * 51  # ceil(101 / 2) rows per rank
    # drop_last: 101 // (2 * 12) = 4 full batches per rank, no row twice
    for e in range(2):
        ids = _epochs(ranks[0]["drop"])[e] + _epochs(ranks[1]["drop"])[e]
        assert len(ids) == len(set(ids)) == 2 * 4 * 12
    assert all(len(b) == 12 for r in ranks for b in r["drop"]["batches"])


@pytest.mark.parametrize("rows", [EVEN, ODD, 7])
@pytest.mark.parametrize("world_size", [2, 3])
def test_item03_explicit_ranks_and_workers_yield_equal_batches_and_cover_the_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: int, world_size: int) -> None:
    with TensorHub(f"file://{tmp_path}/store", project_name="p") as hub:
        _save(hub, "d", rows)
        for drop_last in (False, True):
            per_rank, counts, lens = [], [], []
            for rank in range(world_size):
                stream = hub.stream_dataset("d", batch_size=5, seed=3, rank=rank, world_size=world_size,
                                            drop_last=drop_last)
                ids, count = [], 0
                for worker in range(2):  # as two DataLoader workers would split the rank's share
                    monkeypatch.setattr(streaming, "_worker_share", lambda w=worker: (w, 2))
                    for batch in stream:
                        np.testing.assert_array_equal(batch["x"][:, 0], 4 * batch["id"])  # rows aligned
                        assert len(batch["id"]) <= 5 and (not drop_last or len(batch["id"]) == 5)
                        ids.extend(int(i) for i in batch["id"])
                        count += 1
                per_rank.append(ids)
                counts.append(count)
                lens.append(len(stream))
            assert counts == lens == [counts[0]] * world_size  # every rank the same number of batches
            seen = sum(per_rank, [])
            if drop_last:
                assert counts[0] == rows // (world_size * 5) and len(seen) == len(set(seen))
            else:
                assert set(seen) == set(range(rows)) and len(seen) == world_size * -(-rows // world_size)
                if rows % world_size == 0:
                    assert sorted(seen) == list(range(rows))  # exactly once


def test_item03_ranks_without_a_seed_or_a_process_group_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with TensorHub(f"file://{tmp_path}/store", project_name="p") as hub:
        _save(hub, "d", 20)
        with pytest.raises(InvalidArgumentError, match="pass seed="):
            hub.stream_dataset("d", batch_size=4, rank=0, world_size=2)
        monkeypatch.setenv("RANK", "1")
        monkeypatch.setenv("WORLD_SIZE", "2")
        with pytest.raises(InvalidArgumentError, match="pass seed="):
            hub.stream_dataset("d", batch_size=4)
        stream = hub.stream_dataset("d", batch_size=4, seed=0)  # torchrun's variables name the rank
        assert (stream.rank, stream.world_size, len(stream)) == (1, 2, 3)
        assert sorted(int(i) for b in stream for i in b["id"]) == sorted(
            int(i) for b in hub.stream_dataset("d", batch_size=4, seed=0, rank=1, world_size=2) for i in b["id"])
        ordered = hub.stream_dataset("d", batch_size=4, shuffle=False)  # no order to agree on
        assert [int(i) for b in ordered for i in b["id"]] == list(range(10, 20))
        monkeypatch.setenv("RANK", "one")
        with pytest.raises(ConfigurationError, match="RANK"):
            hub.stream_dataset("d", batch_size=4, seed=0)
        monkeypatch.setenv("RANK", "2")
        with pytest.raises(ConfigurationError, match="RANK < WORLD_SIZE"):
            hub.stream_dataset("d", batch_size=4, seed=0)


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"rank": 2, "world_size": 2}, InvalidArgumentError, "0 <= rank < world_size"),
    ({"rank": -1, "world_size": 2}, InvalidArgumentError, "0 <= rank < world_size"),
    ({"rank": 0, "world_size": 0}, InvalidArgumentError, "0 <= rank < world_size"),
    ({"rank": 1}, InvalidArgumentError, "together"),
    ({"rank": "0", "world_size": 2}, InvalidArgumentTypeError, "rank must be an int"),
    ({"rank": 0, "world_size": 2.0}, InvalidArgumentTypeError, "world_size must be an int"),
    ({"rank": True, "world_size": 2}, InvalidArgumentTypeError, "rank must be an int"),
])
def test_item03_bad_rank_options_are_refused(tmp_path: Path, options: dict, error: type, message: str) -> None:
    with TensorHub(f"file://{tmp_path}/store", project_name="p") as hub:
        _save(hub, "d", 10)
        with pytest.raises(error, match=message):
            hub.stream_dataset("d", batch_size=4, seed=0, **options)


def test_item03_forked_dataloader_worker_reopens_the_blob_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # DataLoader forks its workers: sharing the parent's connections (an S3 client's pooled
    # sockets) between them would mix their replies, so a stream in another process reopens
    with TensorHub(f"file://{tmp_path}/store", project_name="p") as hub:
        _save(hub, "d", 10)
        stream = hub.stream_dataset("d", batch_size=4, seed=0)
        own = stream.blobs
        assert stream.blobs is own  # in the process that made it: the hub's store, kept
        monkeypatch.setattr(os, "getpid", lambda: -1)  # as in a forked worker
        assert stream.blobs is not own
        assert sorted(int(i) for b in stream for i in b["id"]) == list(range(10))
