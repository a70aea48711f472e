"""``hub.copy_to`` throughput, file:// -> mongodb:// and file:// -> s3://, against raw uploads of the same bytes.

The source is a file:// store holding one dataset of ``--size-mb`` MiB (random float32: its chunks
do not compress, so they are stored raw, 8 MiB each, as trained weights are). Measured, each as
``tensorhub / baseline`` of medians over ``--repeats`` alternating runs, each run into a fresh
destination (a new database or key prefix, made untimed):

* ``copy_to file -> mongodb``: ``source.copy_to(dest)`` into a mongodb:// store (the test
  MongoDB-wire server, SecantusDB, or ``$TENSORHUB_TEST_MONGODB_URI``) against reading the same
  chunk files and ``gridfs.GridFS(db).put(bytes)`` each;
* ``copy_to file -> s3``: into an s3:// store on a moto server (child process, 127.0.0.1) against
  reading the same chunk files and ``client.put_object`` each.

Both baselines upload with as many threads as the copy (``tensorhub.copying.DEFAULT_THREADS``),
so the ratio is what the copy's own work costs: the existence check per chunk (HEAD / files
lookup), the BLAKE3 check of each chunk against its name, and the record writes. A ratio of 1.25
is 0.8x the raw throughput (the target); MiB/s of each side is printed too.

    python benchmarks/bench_copy.py                  # 256 MiB
    python benchmarks/bench_copy.py --copy-mb 64,512
    python benchmarks/bench_copy.py --quick          # 32 MiB, 3 repeats
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Result, bench_main, compare, mongodb_server, parse_ints, profile, repeats_of  # noqa: E402
from bench_s3 import BUCKET, MotoServer  # noqa: E402  (sets dummy AWS credentials for this process)

import boto3  # noqa: E402
import numpy as np  # noqa: E402

from tensorhub import TensorHub  # noqa: E402
from tensorhub.copying import DEFAULT_THREADS  # noqa: E402

BENCH = "copy"
PROJECT = "bench"
_unique = itertools.count()


def _source(tmp: Path, size_mb: int) -> tuple[str, list[Path]]:
    """A file:// store with one incompressible dataset of ``size_mb`` MiB; its URI and its chunk files."""
    uri = f"file://{tmp / 'source'}"
    X = np.random.default_rng(0).random((size_mb * 256, 1024), dtype=np.float32)  # 4 KiB rows
    with TensorHub(uri, project_name=PROJECT) as hub:
        hub.save_dataset([X], "weights")
        digests = hub.find_dataset_records("weights")[0]["blob_refs"]
    files = [p for p in (tmp / "source").rglob("*") if p.is_file() and p.name in set(digests)]
    assert len(files) == len(digests), (len(files), len(digests))
    return uri, files


def _parallel(upload: Any, files: list[Path]) -> None:
    def one(path: Path) -> None:
        upload(path.name, path.read_bytes())

    with ThreadPoolExecutor(DEFAULT_THREADS) as pool:
        for _ in pool.map(one, files):
            pass


def _copy(source_uri: str, dest_uri: str) -> None:
    with TensorHub(source_uri, project_name=PROJECT) as source, TensorHub(dest_uri, project_name=PROJECT) as dest:
        report = source.copy_to(dest)
    assert not report.errors and report.total().records == 1, report.lines()


def bench_size(size_mb: int, repeats: int, tmp: Path, mongodb: str, endpoint: str,
               show_profile: bool = False) -> list[Result]:
    import gridfs
    import pymongo

    source_uri, files = _source(tmp, size_mb)
    label = f"{size_mb} MiB ({len(files)} chunks)"
    results = []

    client: Any = pymongo.MongoClient(mongodb)
    try:
        def new_db() -> str:
            return f"copybench{next(_unique)}"

        def raw_gridfs(name: str) -> None:
            fs = gridfs.GridFS(client[name])
            _parallel(lambda key, data: fs.put(data, filename=f"chunks/{key}"), files)

        results.append(compare(
            BENCH, "mongodb", f"copy_to file -> mongodb {label}", "GridFS.put x chunks", repeats=repeats,
            setup_tensorhub=lambda: f"{mongodb}/{new_db()}", tensorhub=lambda uri: _copy(source_uri, uri),
            setup_raw=new_db, raw=raw_gridfs,
            teardown_tensorhub=lambda uri: client.drop_database(uri.rsplit("/", 1)[1]),
            teardown_raw=client.drop_database))
        if show_profile:
            print(profile("copy_to file -> mongodb", lambda: _copy(source_uri, f"{mongodb}/{new_db()}")))
    finally:
        client.close()

    raw_s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    def new_prefix() -> str:
        return f"copybench-{next(_unique)}"

    def s3_uri(prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}?endpoint_url={endpoint}&region=us-east-1"

    def raw_put(prefix: str) -> None:
        _parallel(lambda key, data: raw_s3.put_object(Bucket=BUCKET, Key=f"{prefix}/raw/chunks/{key}", Body=data),
                  files)

    results.append(compare(
        BENCH, "s3", f"copy_to file -> s3 {label}", "put_object x chunks", repeats=repeats,
        setup_tensorhub=new_prefix, tensorhub=lambda prefix: _copy(source_uri, s3_uri(prefix)),
        setup_raw=new_prefix, raw=raw_put))
    if show_profile:
        print(profile("copy_to file -> s3", lambda: _copy(source_uri, s3_uri(new_prefix()))))
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--copy-mb", default=None, help="comma-separated dataset sizes in MiB (default 256)")


def run(sizes_mb: tuple[int, ...] = (256,), repeats: int = 5, tmpdir: str | None = None,
        show_profile: bool = False) -> list[Result]:
    print(f"[copy] sizes {sizes_mb} MiB, {DEFAULT_THREADS} threads each side, repeats={repeats}", flush=True)
    os.environ.setdefault("TENSORHUB_PROGRESS", "0")
    server = MotoServer()
    results: list[Result] = []
    try:
        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        with mongodb_server() as mongodb:
            for size in sizes_mb:
                tmp = Path(tempfile.mkdtemp(prefix="tensorhub-bench-copy-", dir=tmpdir))
                try:
                    results += bench_size(size, repeats, tmp, mongodb, server.endpoint, show_profile)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    finally:
        server.close()
    return results


def from_args(args: argparse.Namespace, extras: dict[str, Any]) -> list[Result]:
    sizes = parse_ints(args.copy_mb) if args.copy_mb else ((32,) if args.quick else (256,))
    results = run(sizes, repeats_of(args), args.tmpdir, args.profile)
    extras["copy_sizes_mb"] = list(sizes)
    return results


def report(results: list[Result], extras: dict[str, Any]) -> list[str]:
    lines = []
    for result, size in zip([r for r in results if r.bench == BENCH],
                            [s for s in extras.get("copy_sizes_mb", []) for _ in range(2)]):
        lines.append(f"  {result.what}: {size / result.tensorhub_s:.0f} MiB/s, baseline "
                     f"{size / result.baseline_s:.0f} MiB/s ({result.baseline_s / result.tensorhub_s:.2f}x the "
                     "raw throughput; target >= 0.8x)")
    return lines


if __name__ == "__main__":
    sys.exit(bench_main(sys.modules[__name__]))
