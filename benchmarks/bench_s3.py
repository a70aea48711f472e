"""The ``s3://`` backend against raw boto3, both talking to the same moto S3 server over HTTP.

Measured, each as ``tensorhub / baseline`` of medians over ``--repeats`` alternating runs:

* blobs: ``S3BlobStore.put(key, bytes)`` against ``client.upload_fileobj`` (boto3's default
  ``TransferConfig``: 8 MiB parts, 10 threads), and ``S3BlobStore.get`` against
  ``client.download_fileobj`` into a ``BytesIO``, for each ``--blob-mb`` size;
* datasets: ``hub.save_dataset([X])`` against ``np.save`` into memory + ``upload_fileobj``, and
  ``hub.find_dataset`` against ``download_fileobj`` + ``np.load`` (X: float32, random, so the
  chunk compression tensorhub does cannot shrink it much);
* logs: ``hub.save_training_logs(N rows)`` against one ``put_object`` of the N rows as
  concatenated BSON; N x ``hub.save_training_log`` against N x ``put_object`` of one row each;
  ``hub.find_training_logs(step={"$gt": N // 2})`` over N rows, warm (same hub: segments cached)
  and cold (a new hub for every run, opened untimed), against ``get_object`` + ``bson.decode_all``
  + the same filter and newest-first sort in Python; and a cold query after 2,000
  ``save_training_log`` (2,000 one-row segments), before and after ``compact`` (time and GETs).

Rows per second written and queried are printed too. The moto server runs in a child process
(like a real endpoint, its CPU does not share the client's GIL), on 127.0.0.1, with dummy
credentials set in this process only. moto keeps objects in memory, so the figures measure the
client side and HTTP on loopback, not a network or S3's own latency.

    python benchmarks/bench_s3.py               # blobs 8 and 64 MiB, datasets 64 MiB, N=10,000 rows
    python benchmarks/bench_s3.py --quick       # blobs 8 MiB, datasets 8 MiB, N=2,000, 3 repeats
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import bson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Result, bench_main, compare, fmt_seconds, parse_ints, profile, repeats_of  # noqa: E402

os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import boto3  # noqa: E402
import numpy as np  # noqa: E402

from tensorhub import TensorHub  # noqa: E402
from tensorhub.registry import open_stores  # noqa: E402

BENCH = "s3"
BUCKET = "tensorhub-bench"
PROJECT = "bench"
_unique = itertools.count()


def _serve(port: int, conn: Any) -> None:
    """Child process: run moto's S3 server on 127.0.0.1:port until the parent says stop."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    conn.send("ready")
    conn.recv()
    server.stop()


class MotoServer:
    """moto's S3 server in a child process; ``endpoint`` is its URL."""

    def __init__(self) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(port, child), daemon=True)
        self._process.start()
        deadline = time.monotonic() + 120
        while not self._conn.poll(0.2):
            if not self._process.is_alive() or time.monotonic() > deadline:
                self._process.terminate()
                raise RuntimeError("moto's S3 server did not start (is moto[server] installed?)")
        self._conn.recv()
        self.endpoint = f"http://127.0.0.1:{port}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._process.join(30)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)


def _uri(endpoint: str) -> str:
    return f"s3://{BUCKET}/run-{next(_unique)}?endpoint_url={endpoint}&region=us-east-1"


def _rows(n: int) -> list[dict[str, Any]]:
    return [{"step": i, "loss": 1.0 / (i + 1)} for i in range(n)]


def _rate(label: str, rows: int, seconds: float) -> str:
    return f"  {label:58} {rows / seconds:>12,.0f} rows/s ({fmt_seconds(seconds)} for {rows:,})"


def _bench_blob(blobs: Any, raw: Any, mb: int, repeats: int, show_profile: bool) -> list[Result]:
    data = np.random.default_rng(mb).bytes(mb << 20)
    key, raw_key = f"put-{mb}", f"raw/put-{mb}"

    def raw_get(_: Any) -> bytes:
        out = io.BytesIO()
        raw.download_fileobj(BUCKET, raw_key, out)
        return out.getvalue()

    put = compare(BENCH, "s3", f"blob put {mb} MiB", "upload_fileobj", repeats=repeats,
                  tensorhub=lambda _: blobs.put(key, data),
                  raw=lambda _: raw.upload_fileobj(io.BytesIO(data), BUCKET, raw_key))
    assert blobs.get(key) == data and raw_get(None) == data
    get = compare(BENCH, "s3", f"blob get {mb} MiB", "download_fileobj", repeats=repeats,
                  tensorhub=lambda _: blobs.get(key), raw=raw_get)
    if show_profile:
        print(profile(f"blob get {mb} MiB", lambda: blobs.get(key)))
    return [put, get]


def bench_blobs(endpoint: str, raw: Any, sizes_mb: tuple[int, ...], repeats: int, show_profile: bool) -> list[Result]:
    blobs = open_stores(_uri(endpoint), index=False).blobs
    try:
        return [r for mb in sizes_mb for r in _bench_blob(blobs, raw, mb, repeats, show_profile)]
    finally:
        blobs.close()


def bench_datasets(endpoint: str, raw: Any, mb: int, repeats: int, show_profile: bool) -> list[Result]:
    X = np.random.default_rng(0).random(((mb << 20) // 1024, 256), dtype=np.float32)
    uri = _uri(endpoint)
    results = []
    with TensorHub(uri, project_name=PROJECT) as hub:
        def raw_save(_: Any) -> None:
            buffer = io.BytesIO()
            np.save(buffer, X)
            buffer.seek(0)
            raw.upload_fileobj(buffer, BUCKET, f"raw/dataset-{mb}.npy")

        def raw_load(_: Any) -> np.ndarray:
            buffer = io.BytesIO()
            raw.download_fileobj(BUCKET, f"raw/dataset-{mb}.npy", buffer)
            buffer.seek(0)
            return np.load(buffer)

        results.append(compare(
            BENCH, "s3", f"save_dataset [X] {mb} MiB", "np.save + upload_fileobj", repeats=repeats,
            tensorhub=lambda _: hub.save_dataset([X], "bench"), raw=raw_save,
            teardown_tensorhub=lambda _: hub.delete_datasets(dataset_name="bench")))
        hub.save_dataset([X], "bench")
        assert np.array_equal(hub.find_dataset("bench")[0], X) and np.array_equal(raw_load(None), X)
        results.append(compare(BENCH, "s3", f"find_dataset {mb} MiB", "download_fileobj + np.load",
                               repeats=repeats, tensorhub=lambda _: hub.find_dataset("bench")[0], raw=raw_load))
        if show_profile:
            print(profile(f"find_dataset {mb} MiB", lambda: hub.find_dataset("bench")))
    return results


def bench_logs(endpoint: str, raw: Any, n: int, n_single: int, repeats: int,
               show_profile: bool) -> tuple[list[Result], list[str]]:
    results, rates = [], []
    rows = _rows(n)

    def new_hub() -> TensorHub:
        return TensorHub(_uri(endpoint), project_name=PROJECT)

    def close(hub: TensorHub) -> None:
        hub.close()

    def raw_batch(_: Any) -> None:
        raw.put_object(Bucket=BUCKET, Key=f"raw/logs-{next(_unique)}.bson",
                       Body=b"".join(bson.encode({"time": time.time(), **r}) for r in rows))

    batch = compare(BENCH, "s3", f"save_training_logs({n} rows)", "put_object of N BSON rows", repeats=repeats,
                    setup_tensorhub=new_hub, tensorhub=lambda hub: hub.save_training_logs(rows),
                    teardown_tensorhub=close, raw=raw_batch)
    results.append(batch)
    rates.append(_rate(f"save_training_logs({n} rows) (one PUT)", n, batch.tensorhub_s))

    def single(hub: TensorHub) -> None:
        for r in rows[:n_single]:
            hub.save_training_log(**r)

    def raw_single(_: Any) -> None:
        base = next(_unique)
        for i, r in enumerate(rows[:n_single]):
            raw.put_object(Bucket=BUCKET, Key=f"raw/log-{base}-{i}.bson", Body=bson.encode({"time": time.time(), **r}))

    one = compare(BENCH, "s3", f"save_training_log x{n_single}", "put_object x N", repeats=repeats,
                  setup_tensorhub=new_hub, tensorhub=single, teardown_tensorhub=close, raw=raw_single)
    results.append(one)
    rates.append(_rate(f"save_training_log x{n_single} (one PUT each)", n_single, one.tensorhub_s))

    # queries over N rows written as one batch
    uri = _uri(endpoint)
    with TensorHub(uri, project_name=PROJECT) as hub:
        hub.save_training_logs(rows)
    raw_key = "raw/query.bson"
    raw.put_object(Bucket=BUCKET, Key=raw_key, Body=b"".join(
        bson.encode({"time": time.time(), "project_name": PROJECT, **r}) for r in rows))
    cutoff = n // 2

    def raw_query(_: Any) -> list[dict]:
        docs = bson.decode_all(raw.get_object(Bucket=BUCKET, Key=raw_key)["Body"].read())
        found = [d for d in docs if d.get("project_name") == PROJECT and d["step"] > cutoff]
        found.sort(key=lambda d: d["time"], reverse=True)
        return found

    warm_hub = TensorHub(uri, project_name=PROJECT)
    try:
        expected = sorted(d["step"] for d in raw_query(None))
        assert sorted(r["step"] for r in warm_hub.find_training_logs(step={"$gt": cutoff})) == expected
        warm = compare(BENCH, "s3", f"find_training_logs warm, N={n}", "get_object + decode + filter",
                       repeats=repeats, tensorhub=lambda _: warm_hub.find_training_logs(step={"$gt": cutoff}),
                       raw=raw_query)
        if show_profile:
            print(profile("find_training_logs warm", lambda: warm_hub.find_training_logs(step={"$gt": cutoff})))
    finally:
        warm_hub.close()
    cold = compare(BENCH, "s3", f"find_training_logs cold, N={n}", "get_object + decode + filter",
                   repeats=repeats, setup_tensorhub=lambda: TensorHub(uri, project_name=PROJECT),
                   tensorhub=lambda hub: hub.find_training_logs(step={"$gt": cutoff}),
                   teardown_tensorhub=close, raw=raw_query)
    results += [warm, cold]
    rates.append(_rate(f"find_training_logs, N={n}, warm (rows scanned)", n, warm.tensorhub_s))
    rates.append(_rate(f"find_training_logs, N={n}, cold (rows scanned)", n, cold.tensorhub_s))
    rates.append(_rate("  ... baseline get_object + decode + filter (rows scanned)", n, warm.baseline_s))
    rates += bench_compaction(endpoint)
    return results, rates


def _timed_cold_query(uri: str) -> tuple[float, int, int]:
    """``(seconds, GETs, rows)`` of one query by a fresh hub (opened untimed)."""
    with TensorHub(uri, project_name=PROJECT) as hub:
        gets = []
        hub.index._conn.client.meta.events.register(
            "before-call.s3.GetObject", lambda **_: gets.append(1))
        start = time.perf_counter()
        found = hub.find_training_logs(step={"$gte": 0})
        return time.perf_counter() - start, len(gets), len(found)


def bench_compaction(endpoint: str, n: int = 2000) -> list[str]:
    """A cold query after ``n`` single-row inserts (``n`` segments), before and after ``compact``."""
    from concurrent.futures import ThreadPoolExecutor

    from tensorhub.backends.s3 import _compaction as s3_compaction

    uri = _uri(endpoint)
    trigger, s3_compaction.COMPACT_TRIGGER = s3_compaction.COMPACT_TRIGGER, 0  # measure the uncompacted state first
    try:
        with TensorHub(uri, project_name=PROJECT) as hub, ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda r: hub.save_training_log(**r), _rows(n)))
        before = _timed_cold_query(uri)
        with TensorHub(uri, project_name=PROJECT) as hub:
            assert hub.index.supports_compaction, f"{type(hub.index).__name__} declares no compaction"
            start = time.perf_counter()
            merged = hub.index.compact("training_logs")
            took = time.perf_counter() - start
        after = _timed_cold_query(uri)
    finally:
        s3_compaction.COMPACT_TRIGGER = trigger
    assert before[2] == after[2] == n, (before, after)
    return [f"  cold find_training_logs after {n:,} save_training_log: {fmt_seconds(before[0])}, "
            f"{before[1]:,} GETs; compact() merged {merged:,} segments in {fmt_seconds(took)}; "
            f"then {fmt_seconds(after[0])}, {after[1]:,} GETs"]


def run(blob_mb: tuple[int, ...] = (8, 64), dataset_mb: int = 64, n: int = 10_000, n_single: int = 300,
        repeats: int = 5, show_profile: bool = False) -> list[Result]:
    """Run the S3 benchmarks against a moto server started (and stopped) here."""
    print(f"[s3] blobs {blob_mb} MiB, dataset {dataset_mb} MiB, N={n}, single={n_single}, repeats={repeats}",
          flush=True)
    server = MotoServer()
    try:
        raw = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1")
        raw.create_bucket(Bucket=BUCKET)
        results = bench_blobs(server.endpoint, raw, blob_mb, repeats, show_profile)
        results += bench_datasets(server.endpoint, raw, dataset_mb, repeats, show_profile)
        log_results, rates = bench_logs(server.endpoint, raw, n, n_single, repeats, show_profile)
        results += log_results
    finally:
        server.close()
    print("\nrows per second (tensorhub, median run):")
    print("\n".join(rates))
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blob-mb", type=parse_ints, default=None, help="comma-separated blob sizes in MiB (default 8,64)")
    parser.add_argument("--s3-dataset-mb", type=int, default=None, help="dataset size in MiB (default 64; 8 with --quick)")
    parser.add_argument("--s3-rows", type=int, default=None, help="log rows (default 10,000; 2,000 with --quick)")
    parser.add_argument("--s3-single", type=int, default=None, help="single log writes (default 300; 100 with --quick)")


def from_args(args: argparse.Namespace, extras: dict[str, Any]) -> list[Result]:
    return run(args.blob_mb or ((8,) if args.quick else (8, 64)), args.s3_dataset_mb or (8 if args.quick else 64),
               args.s3_rows or (2000 if args.quick else 10_000), args.s3_single or (100 if args.quick else 300),
               repeats_of(args), args.profile)


def main(argv: list[str] | None = None) -> int:
    return bench_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
