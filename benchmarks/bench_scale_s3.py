"""Queries and claims at scale on ``s3://`` (moto over HTTP): time and GETs as the store grows (issue 14).

For each N (log rows), on a fresh prefix of a moto S3 server run in a child process on 127.0.0.1:

* N training-log rows of 100 runs (1% each), written as runs flush them: batches of 500 rows of
  one run (``step`` counts rows across the store), so N/500 segments;
* ``find_training_logs(task_id=run 7, sort=[("step", -1)], limit=100)`` and
  ``find_training_logs(step={"$gte": N - 50})`` (50 rows), each cold (a new hub: what a fresh
  process pays) and warm (the same hub again), with the GETs and LISTs each sends;
* a claim (``run_task(in_process=True)``, a no-op script) among N/10 pending tasks created in
  sweeps of 100 (one segment each), cold and warm; then with 90% of the sweeps finished, a cold
  claim (its GETs show the finished segments are skipped);
* ``delete_training_log(task_id=run 7)``;
* the cold run query again after ``compact`` (a few merged segments).

Target (issue 14): a run's logs out of 10^5 rows in <= 10 GETs. moto keeps objects in memory,
so times measure the client and HTTP on loopback, not S3's latency; GET counts carry over.

    python benchmarks/bench_scale_s3.py            # N = 10^4 and 10^5
    python benchmarks/bench_scale_s3.py --quick    # N = 10^4

``run_s3_scale(sizes)`` returns the rows (dicts) for ``bench_scale.py``'s table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("TENSORHUB_PROGRESS", "0")

import boto3  # noqa: E402
from bson import ObjectId  # noqa: E402

from tensorhub import TensorHub  # noqa: E402
from tensorhub.backends.s3 import _compaction as s3_compaction  # noqa: E402

log = logging.getLogger("bench_scale_s3")

BUCKET = "tensorhub-scale"
PROJECT = "bench"
RUNS = 100
BATCH = 500
SWEEP = 100


class _Requests:
    """Counts the S3 requests of one hub's client by operation (GetObject, ListObjectsV2...)."""

    def __init__(self, hub: TensorHub) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        getattr(hub.index, "_conn").client.meta.events.register("before-call.s3", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        with self._lock:
            self.counts[model.name] += 1


def _measure(rows: list[dict[str, Any]], n: int, what: str, hub: TensorHub, run: Callable[[], Any],
             check: Callable[[Any], bool] | None = None) -> None:
    requests = _Requests(hub)
    start = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - start
    if check is not None and not check(out):
        raise AssertionError(f"{what} at N={n} gave a wrong answer")
    row = {"backend": "s3", "n": n, "what": what, "seconds": seconds,
           "gets": requests.counts["GetObject"], "lists": requests.counts["ListObjectsV2"],
           "puts": requests.counts["PutObject"]}
    rows.append(row)
    log.info("N=%-7d %-58s %9.1f ms  GETs %-5d LISTs %d", n, what, seconds * 1e3, row["gets"], row["lists"])


@contextmanager
def _moto() -> Iterator[str]:
    from bench_s3 import MotoServer

    server = MotoServer()
    try:
        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield server.endpoint
    finally:
        server.close()


def _fill_logs(uri: str, n: int) -> list[ObjectId]:
    runs = [ObjectId() for _ in range(RUNS)]
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    with TensorHub(uri, project_name=PROJECT) as hub:
        for first in range(0, n, BATCH):
            run = runs[(first // BATCH) % RUNS]
            hub.index.insert_many("training_logs", [
                {"_id": ObjectId(), "project_name": PROJECT, "time": start + dt.timedelta(seconds=i),
                 "task_id": run, "attempt": 1, "step": i, "loss": 1.0 / (i + 1)}
                for i in range(first, min(n, first + BATCH))])
    return runs


def _bench_logs(rows: list[dict[str, Any]], uri: str, n: int) -> None:
    runs = _fill_logs(uri, n)
    run7 = runs[7]
    per_run = sum(min(BATCH, n - f) for f in range(0, n, BATCH) if (f // BATCH) % RUNS == 7)

    def by_run(hub: TensorHub) -> Any:
        return hub.find_training_logs(task_id=run7, sort=[("step", -1)], limit=100)

    def last50(hub: TensorHub) -> Any:
        return hub.find_training_logs(step={"$gte": n - 50})

    for what, query, expect in [("find_training_logs(task_id=run, sort step desc, limit 100)", by_run,
                                 min(100, per_run)),
                                ("find_training_logs(step >= N-50)", last50, 50)]:
        with TensorHub(uri, project_name=PROJECT) as hub:
            _measure(rows, n, f"{what} cold", hub, lambda: query(hub), lambda out: len(out) == expect)
            _measure(rows, n, f"{what} warm", hub, lambda: query(hub), lambda out: len(out) == expect)
    with TensorHub(uri, project_name=PROJECT) as hub:
        _measure(rows, n, "delete_training_log(task_id=run) cold", hub,
                 lambda: hub.delete_training_log(task_id=run7), lambda out: out == per_run)
    with TensorHub(uri, project_name=PROJECT) as hub:
        start = time.perf_counter()
        merged = hub.index.compact("training_logs")
        log.info("N=%-7d compact: %d segments merged in %.1f s", n, merged, time.perf_counter() - start)
    with TensorHub(uri, project_name=PROJECT) as hub:
        _measure(rows, n, "find_training_logs(task_id=run, ...) cold, after compact", hub,
                 lambda: by_run(hub), lambda out: len(out) == 0)  # run 7's rows were deleted above
        _measure(rows, n, "find_training_logs(task_id=run 8, ...) warm, after compact", hub,
                 lambda: hub.find_training_logs(task_id=runs[8], sort=[("step", -1)], limit=100),
                 lambda out: len(out) == min(100, per_run))


def _bench_claims(rows: list[dict[str, Any]], uri: str, n: int, script: Path) -> None:
    tasks = max(SWEEP, n // 10)
    with TensorHub(uri, project_name=PROJECT) as hub:
        for s in range(0, tasks, SWEEP):
            hub.create_sweep("noop", script, points=[{"i": s + k} for k in range(SWEEP)])
    with TensorHub(uri, project_name=PROJECT) as hub:
        _measure(rows, n, f"run_task(in_process) among {tasks} pending, cold", hub,
                 lambda: hub.run_task(in_process=True), bool)
        _measure(rows, n, f"run_task(in_process) among {tasks} pending, warm", hub,
                 lambda: hub.run_task(in_process=True), bool)
        # 90% of the sweeps end (one write per sweep, as if their runners had finished them)
        ended = {"project_name": PROJECT, "status": "pending", "hyper_parameters.i": {"$lt": tasks * 9 // 10}}
        done = hub.index.update_many("tasks", ended, {"$set": {"status": "finished"}})
        log.info("N=%-7d %d tasks marked finished", n, done)
    with TensorHub(uri, project_name=PROJECT) as hub:
        _measure(rows, n, f"run_task(in_process), 90% of {tasks} finished, cold", hub,
                 lambda: hub.run_task(in_process=True), bool)


def run_s3_scale(sizes: Sequence[int], endpoint: str | None = None) -> list[dict[str, Any]]:
    """Run the scale benchmark on s3:// for each N in ``sizes``; one dict per measurement
    (``backend``, ``n``, ``what``, ``seconds``, ``gets``, ``lists``, ``puts``).

    Starts (and stops) a moto server unless ``endpoint`` is given. Automatic compaction is off
    while it runs, so GET counts do not depend on when a background merge happens.
    """
    rows: list[dict[str, Any]] = []
    trigger = s3_compaction.COMPACT_TRIGGER
    s3_compaction.COMPACT_TRIGGER = 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "noop.py"
            script.write_text("result = i\n")
            if endpoint is None:
                with _moto() as started:
                    _run(rows, started, sizes, script)
            else:
                _run(rows, endpoint, sizes, script)
    finally:
        s3_compaction.COMPACT_TRIGGER = trigger
    return rows


def _run(rows: list[dict[str, Any]], endpoint: str, sizes: Sequence[int], script: Path) -> None:
    for n in sizes:
        base = f"s3://{BUCKET}/scale-{n}-{ObjectId()}"
        query = f"?endpoint_url={endpoint}&region=us-east-1"
        _bench_logs(rows, base + "-logs" + query, n)
        _bench_claims(rows, base + "-tasks" + query, n, script)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 10^4 only")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="comma-separated N (default 10000,100000)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    sizes = args.sizes or ([10_000] if args.quick else [10_000, 100_000])
    rows = run_s3_scale(sizes)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
