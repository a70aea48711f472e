"""Dataset save/load on file:// against np.save/np.load, and a lazy 1,000-row slice against a full load.

For each size (``--size-mb``, default 40 and 400 MiB) one float32 array of shape
``(size_mb * 1024, 256)`` (1 KiB a row) is used. Measured, each as ``tensorhub / baseline`` of
medians over ``--repeats`` alternating runs, in a temporary directory on the same disk for both:

* ``save``: ``hub.save_dataset([X], name)`` against ``np.save(path, X)`` (each run writes a new file;
  neither side fsyncs; ``os.sync()`` before each run, untimed, so no run pays for the last one's
  dirty pages; a few values of ``X`` change before each run so tensorhub's content-addressed
  chunks are never found already stored);
* ``load``: ``hub.find_dataset(name)[0]`` against ``np.load(path)`` (files just written, so both
  read from the page cache: this compares CPU and copying, not the disk);
* ``lazy slice``: ``hub.find_dataset(name, lazy=True)[0][i:i+1000]`` against the full
  ``hub.find_dataset(name)[0]`` (how much a lazy read saves), and against
  ``np.load(path, mmap_mode="r")[i:i+1000]`` (the raw way to read a few rows).

    python benchmarks/bench_datasets.py                 # 40 and 400 MiB
    python benchmarks/bench_datasets.py --size-mb 100   # one size
    python benchmarks/bench_datasets.py --quick         # 8 MiB, 3 repeats
    python benchmarks/bench_datasets.py --profile       # also print cProfile of save and load
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Result, bench_main, for_each_size, compare, parse_ints, profile, repeats_of  # noqa: E402

from tensorhub import TensorHub  # noqa: E402

BENCH = "datasets"
PROJECT = "bench"
ROW_FLOATS = 256
SLICE_ROWS = 1000
_unique = itertools.count()


def make_array(size_mb: int, seed: int = 0) -> np.ndarray:
    """A float32 array of ``size_mb`` MiB, 1 KiB a row."""
    return np.random.default_rng(seed).random((size_mb * 1024, ROW_FLOATS), dtype=np.float32)


def bench_size(size_mb: int, repeats: int, tmp: Path, show_profile: bool = False) -> list[Result]:
    X = make_array(size_mb)
    label = f"{size_mb} MiB"
    results = []
    hub = TensorHub(f"file://{tmp / 'hub'}", project_name=PROJECT)
    try:
        version = itertools.count(1)

        def fresh_content(value: Any = None) -> Any:
            # tensorhub stores content-addressed chunks and skips those it already holds: change
            # one value in every 256 KiB so that each run saves new bytes, as a new dataset would
            X[::256, 0] = next(version)
            os.sync()
            return value

        def new_path() -> Path:
            return fresh_content(tmp / f"raw-{next(_unique)}.npy")

        results.append(compare(
            BENCH, "file", f"save_dataset [X] {label}", "np.save", repeats=repeats,
            tensorhub=lambda _: hub.save_dataset([X], "bench_save"), raw=lambda path: np.save(path, X),
            setup_tensorhub=fresh_content, setup_raw=new_path,
            teardown_tensorhub=lambda _: hub.delete_datasets(dataset_name="bench_save"),
            teardown_raw=lambda path: path.unlink()))

        path = tmp / "loaded.npy"
        np.save(path, X)
        hub.save_dataset([X], "bench")
        os.sync()
        assert np.array_equal(hub.find_dataset("bench")[0], X) and np.array_equal(np.load(path), X)
        results.append(compare(BENCH, "file", f"find_dataset {label}", "np.load", repeats=repeats,
                               tensorhub=lambda _: hub.find_dataset("bench"), raw=lambda _: np.load(path)))

        n = X.shape[0]
        starts = itertools.cycle(np.random.default_rng(1).integers(0, n - SLICE_ROWS, size=64).tolist())

        def lazy_slice(_: Any) -> np.ndarray:
            i = next(starts)
            return hub.find_dataset("bench", lazy=True)[0][i:i + SLICE_ROWS]

        def mmap_slice(_: Any) -> np.ndarray:
            i = next(starts)
            return np.array(np.load(path, mmap_mode="r")[i:i + SLICE_ROWS])

        i = n // 3
        assert np.array_equal(hub.find_dataset("bench", lazy=True)[0][i:i + SLICE_ROWS], X[i:i + SLICE_ROWS])
        results.append(compare(BENCH, "file", f"lazy [0][i:i+{SLICE_ROWS}] of {label}", "full find_dataset",
                               repeats=repeats, tensorhub=lazy_slice, raw=lambda _: hub.find_dataset("bench")))
        results.append(compare(BENCH, "file", f"lazy [0][i:i+{SLICE_ROWS}] of {label}", "np.load mmap slice",
                               repeats=max(repeats, 20), tensorhub=lazy_slice, raw=mmap_slice))
        if show_profile:
            fresh_content()
            print(profile(f"save_dataset {label}", lambda: hub.save_dataset([X], "bench_profile")))
            print(profile(f"find_dataset {label}", lambda: hub.find_dataset("bench")))
    finally:
        hub.close()
    return results


def run(sizes: tuple[int, ...] = (40, 400), repeats: int = 5, tmpdir: str | None = None,
        show_profile: bool = False) -> list[Result]:
    """Run the dataset benchmarks; files live in a temporary directory that is removed afterwards."""
    print(f"[datasets] sizes={list(sizes)} MiB, repeats={repeats}", flush=True)
    return for_each_size("datasets", sizes, tmpdir, lambda size, tmp: bench_size(size, repeats, tmp, show_profile))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size-mb", type=parse_ints, default=None,
                        help="comma-separated array sizes in MiB (default 40,400; 8 with --quick)")


def from_args(args: argparse.Namespace, extras: dict[str, Any]) -> list[Result]:
    sizes = args.size_mb or ((8,) if args.quick else (40, 400))
    return run(sizes, repeats_of(args), args.tmpdir, args.profile)


def main(argv: list[str] | None = None) -> int:
    return bench_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
