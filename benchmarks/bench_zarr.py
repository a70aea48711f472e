"""A dataset read through its zarr view (``hub.open_zarr``) against ``find_dataset`` on file://.

For each size (``--size-mb``, default 400 MiB; 40 with ``--quick``) one float32 array of shape
``(size_mb * 1024, 256)`` (1 KiB a row, random: its chunks are stored uncompressed) and one of
small integers (compressible: LZ4 frames) are saved once. Measured, each as ``zarr / baseline`` of
medians over ``--repeats`` alternating runs, from the page cache:

* ``zarr group[name][...]``: ``hub.open_zarr(name)`` and reading the whole array through zarr
  (zarr's codec pipeline decodes each Blosc frame the store hands it) against
  ``hub.find_dataset(name)[0]``. Issue 15's target: a read speed of at least 0.7x, i.e. a ratio
  (time) of at most 1.43;
* ``dask.array.from_zarr(...).compute()`` against the same ``find_dataset``, when dask is installed.

    python benchmarks/bench_zarr.py               # 400 MiB
    python benchmarks/bench_zarr.py --quick       # 40 MiB, 3 repeats
    python benchmarks/bench_zarr.py --size-mb 40,400
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Result, bench_main, compare, for_each_size, parse_ints, profile, repeats_of  # noqa: E402

from tensorhub import TensorHub  # noqa: E402

BENCH = "zarr"
PROJECT = "bench"
ROW_FLOATS = 256


def arrays(size_mb: int) -> dict[str, np.ndarray]:
    """``random``: incompressible float32; ``counts``: compressible int32 (both 1 KiB a row)."""
    rng = np.random.default_rng(0)
    return {"random": rng.random((size_mb * 1024, ROW_FLOATS), dtype=np.float32),
            "counts": rng.integers(0, 100, (size_mb * 1024, ROW_FLOATS), dtype=np.int32)}


def bench_size(size_mb: int, repeats: int, tmp: Path, show_profile: bool = False) -> list[Result]:
    import zarr  # noqa: F401 - fail early and clearly when zarr is missing

    results = []
    hub = TensorHub(f"file://{tmp / 'hub'}", project_name=PROJECT)
    try:
        for kind, X in arrays(size_mb).items():
            name = f"bench_{kind}"
            hub.save_dataset({"X": X}, name)
            group = hub.open_zarr(name)
            assert np.array_equal(group["X"][...], X) and np.array_equal(hub.find_dataset(name)["X"], X)
            del X
            label = f"{kind} {size_mb} MiB"
            results.append(compare(BENCH, "file", f"zarr open + [...] {label}", "find_dataset", repeats=repeats,
                                   tensorhub=lambda _, n=name: hub.open_zarr(n)["X"][...],
                                   raw=lambda _, n=name: hub.find_dataset(n)["X"]))
            try:
                import dask.array as da
            except ImportError:
                continue
            results.append(compare(BENCH, "file", f"dask.from_zarr {label}", "find_dataset", repeats=repeats,
                                   tensorhub=lambda _, n=name: da.from_zarr(hub.open_zarr(n).store,
                                                                            component="X").compute(),
                                   raw=lambda _, n=name: hub.find_dataset(n)["X"]))
            if show_profile:
                print(profile(f"zarr read {label}", lambda n=name: hub.open_zarr(n)["X"][...]))
    finally:
        hub.close()
    return results


def run(sizes: tuple[int, ...] = (400,), repeats: int = 5, tmpdir: str | None = None,
        show_profile: bool = False) -> list[Result]:
    print(f"[zarr] sizes={list(sizes)} MiB, repeats={repeats}", flush=True)
    return for_each_size("zarr", sizes, tmpdir, lambda size, tmp: bench_size(size, repeats, tmp, show_profile))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size-mb", type=parse_ints, default=None,
                        help="comma-separated array sizes in MiB (default 400; 40 with --quick)")


def from_args(args: argparse.Namespace, extras: dict[str, Any]) -> list[Result]:
    sizes = args.size_mb or ((40,) if args.quick else (400,))
    return run(sizes, repeats_of(args), args.tmpdir, args.profile)


def report(results: list[Result], extras: dict[str, Any]) -> list[str]:
    lines = []
    for r in results:
        speed = 1 / r.ratio if r.ratio else float("inf")
        lines.append(f"{r.what}: read speed {speed:.2f}x of find_dataset (target >= 0.7x: "
                     f"{'met' if speed >= 0.7 else 'NOT met'})")
    return lines


def main(argv: list[str] | None = None) -> int:
    return bench_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
