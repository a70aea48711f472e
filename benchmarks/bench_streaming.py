"""Streaming a dataset on file://: throughput against in-memory random indexing, and peak memory (issue 4).

For each size (``--stream-mb``, default 200 MiB; 40 with ``--quick``) one dataset ``[X, y]`` is
saved: ``X`` float32 of shape ``(size_mb * 1024, 256)`` (1 KiB a row) and ``y`` int64 labels (each
row's index, so every batch can be checked against ``X``). Measured:

* ``throughput``: one epoch of ``hub.stream_dataset(name, batch_size=256, seed=0)`` (shuffled), as
  ``tensorhub / baseline`` of medians over ``--repeats`` alternating runs, against the same epoch
  drawn from the arrays already in memory (``perm = rng.permutation(n)``, then ``X[perm[i:i+256]]``
  and ``y[...]`` for each batch), and against ``hub.find_dataset(name)`` followed by that in-memory
  epoch (loading everything first, what streaming replaces). Rows/s = rows / median time.
* ``memory``: the peak extra memory of one epoch, as a fraction of the dataset's size: the
  ``tracemalloc`` peak of an epoch in this process, and the growth of the resident set in a fresh
  process (``VmHWM`` after the epoch minus ``VmRSS`` before it, the high-water mark being reset
  through ``/proc/self/clear_refs`` once the hub is open; ``ru_maxrss`` where ``/proc`` is missing).

The 1,000-row lazy slice against a full load is in ``bench_datasets.py``.

    python benchmarks/bench_streaming.py                   # 200 MiB
    python benchmarks/bench_streaming.py --stream-mb 40,1000
    python benchmarks/bench_streaming.py --quick           # 40 MiB, 3 repeats
    python benchmarks/bench_streaming.py --profile         # also print cProfile of one epoch
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Result, bench_main, for_each_size, compare, parse_ints, profile, repeats_of  # noqa: E402

from tensorhub import TensorHub  # noqa: E402

BENCH = "streaming"
PROJECT = "bench"
NAME = "stream"
ROW_FLOATS = 256
BATCH = 256
SEED = 0
MEMORY_RUNS = 3  # fresh processes measuring RSS growth; the median is kept


def make_dataset(size_mb: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``X`` float32 of ``size_mb`` MiB (1 KiB a row) and ``y`` int64 labels, each row's index."""
    n = size_mb * 1024
    return np.random.default_rng(seed).random((n, ROW_FLOATS), dtype=np.float32), np.arange(n, dtype=np.int64)


def stream_epoch(hub: TensorHub) -> int:
    """One shuffled epoch of ``hub.stream_dataset``; returns the number of rows seen."""
    rows = 0
    for xb, _yb in hub.stream_dataset(NAME, batch_size=BATCH, seed=SEED):
        rows += len(xb)
    return rows


def memory_epoch(X: np.ndarray, y: np.ndarray, seed: int = SEED) -> int:
    """The same epoch from arrays in memory: a shuffled permutation, each batch fancy-indexed."""
    n = len(X)
    perm = np.random.default_rng(seed).permutation(n)
    rows = 0
    for start in range(0, n, BATCH):
        index = perm[start:start + BATCH]
        xb, _yb = X[index], y[index]
        rows += len(xb)
    return rows


def check_epoch(hub: TensorHub, X: np.ndarray) -> None:
    """Every row exactly once, each batch's rows equal to ``X`` at the batch's labels."""
    seen = np.zeros(len(X), dtype=np.int64)
    for xb, yb in hub.stream_dataset(NAME, batch_size=BATCH, seed=SEED):
        assert len(xb) == len(yb) <= BATCH and np.array_equal(xb, X[yb]), "a streamed batch differs from X"
        seen[yb] += 1
    assert (seen == 1).all(), "the stream did not give every row exactly once"


# ---------------------------------------------------------------- memory
def _status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _memory_child(uri: str, conn: Any) -> None:
    """Fresh process: open the hub, reset the RSS high-water mark, stream one epoch, report the growth."""
    os.environ.setdefault("TENSORHUB_PROGRESS", "0")
    hub = TensorHub(uri, project_name=PROJECT)
    stream = hub.stream_dataset(NAME, batch_size=BATCH, seed=SEED)
    how = "VmHWM - VmRSS (/proc/self/status)"
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        how = "VmHWM - VmRSS, high-water mark not reset (includes the peak before streaming)"
    before = _status_mib("VmRSS")
    if before is None:
        how = "ru_maxrss growth"
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = sum(len(xb) for xb, _ in stream)
    if how.startswith("VmHWM"):
        peak = _status_mib("VmHWM")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    hub.close()
    conn.send({"rows": rows, "rss_before_mib": before, "rss_peak_mib": peak, "how": how})


def rss_growth(uri: str) -> dict[str, Any]:
    """RSS growth of one epoch in a fresh (spawned) process."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_memory_child, args=(uri, child), daemon=True)
    process.start()
    try:
        if not parent.poll(600):
            raise RuntimeError("the memory-measuring process did not report within 600 s")
        return parent.recv()
    finally:
        process.join(30)
        if process.is_alive():
            process.terminate()


def traced_peak(hub: TensorHub) -> int:
    """The ``tracemalloc`` peak (bytes) of one epoch in this process, above what was allocated before."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        stream_epoch(hub)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def bench_size(size_mb: int, repeats: int, tmp: Path, show_profile: bool = False,
               memory: list[dict[str, Any]] | None = None) -> list[Result]:
    X, y = make_dataset(size_mb)
    n = len(X)
    dataset_bytes = X.nbytes + y.nbytes
    label = f"{size_mb} MiB"
    uri = f"file://{tmp / 'hub'}"
    hub = TensorHub(uri, project_name=PROJECT)
    results = []
    try:
        hub.save_dataset([X, y], NAME)
        os.sync()
        check_epoch(hub, X)
        assert stream_epoch(hub) == memory_epoch(X, y) == n

        results.append(compare(BENCH, "file", f"stream_dataset epoch, batch {BATCH}, {label}",
                               "numpy X[perm[i:i+256]] in memory", repeats=repeats,
                               tensorhub=lambda _: stream_epoch(hub), raw=lambda _: memory_epoch(X, y)))
        results.append(compare(BENCH, "file", f"stream_dataset epoch, batch {BATCH}, {label}",
                               "find_dataset + numpy epoch", repeats=repeats,
                               tensorhub=lambda _: stream_epoch(hub),
                               raw=lambda _: memory_epoch(*hub.find_dataset(NAME))))
        for r in results[-2:]:
            print(f"  {'':8} {'':42} {n / r.tensorhub_s / 1e3:6.0f}k vs {n / r.baseline_s / 1e3:6.0f}k rows/s",
                  flush=True)

        traced = traced_peak(hub)
        children = [rss_growth(uri) for _ in range(MEMORY_RUNS)]
        assert all(c["rows"] == n for c in children)
        growth = statistics.median(c["rss_peak_mib"] - c["rss_before_mib"] for c in children)
        entry = {"size": label, "dataset_mib": dataset_bytes / 2**20,
                 "tracemalloc_peak_mib": traced / 2**20, "tracemalloc_fraction": traced / dataset_bytes,
                 "rss_growth_mib": growth, "rss_fraction": growth * 2**20 / dataset_bytes,
                 "rss_growth_runs_mib": [c["rss_peak_mib"] - c["rss_before_mib"] for c in children],
                 "rss_how": children[0]["how"]}
        print(f"  {'memory':8} {f'one epoch of {label} ({dataset_bytes / 2**20:.1f} MiB)':42} "
              f"tracemalloc peak {entry['tracemalloc_peak_mib']:.0f} MiB (x{entry['tracemalloc_fraction']:.2f}), "
              f"RSS growth {growth:.0f} MiB (x{entry['rss_fraction']:.2f})", flush=True)
        if memory is not None:
            memory.append(entry)
        if show_profile:
            print(profile(f"stream_dataset epoch {label}", lambda: stream_epoch(hub)))
    finally:
        hub.close()
    return results


def memory_table(memory: list[dict[str, Any]]) -> str:
    lines = ["| dataset | tracemalloc peak | fraction | RSS growth (fresh process) | fraction |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for m in memory:
        lines.append(f"| {m['size']} ({m['dataset_mib']:.1f} MiB) | {m['tracemalloc_peak_mib']:.0f} MiB "
                     f"| {m['tracemalloc_fraction']:.2f} | {m['rss_growth_mib']:.0f} MiB | {m['rss_fraction']:.2f} |")
    return "\n".join(lines)


def run(sizes: tuple[int, ...] = (200,), repeats: int = 5, tmpdir: str | None = None, show_profile: bool = False,
        memory: list[dict[str, Any]] | None = None) -> list[Result]:
    """Run the streaming benchmarks; peak-memory figures go to ``memory`` (and are printed)."""
    print(f"[streaming] sizes={list(sizes)} MiB, batch_size={BATCH}, repeats={repeats}", flush=True)
    return for_each_size("streaming", sizes, tmpdir, lambda size, tmp: bench_size(size, repeats, tmp, show_profile, memory))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stream-mb", type=parse_ints, default=None,
                        help="comma-separated sizes in MiB of the streamed dataset (default 200; 40 with --quick)")


def from_args(args: argparse.Namespace, extras: dict[str, Any]) -> list[Result]:
    sizes = args.stream_mb or ((40,) if args.quick else (200,))
    return run(sizes, repeats_of(args), args.tmpdir, args.profile, extras.setdefault("memory", []))


def report(results: list[Result], extras: dict[str, Any]) -> list[str]:
    if not extras.get("memory"):
        return []
    return ["peak extra memory of one streamed epoch, as a fraction of the dataset's size", "",
            memory_table(extras["memory"])]


def main(argv: list[str] | None = None) -> int:
    return bench_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
