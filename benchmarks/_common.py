"""Shared helpers of the benchmarks: paired timing, the ratio table, profiling, the test MongoDB server.

Every benchmark times a tensorhub operation and a raw baseline doing the same job in the same run,
on the same machine and disk, and reports ``tensorhub / baseline``. Absolute seconds are printed
for context only: they vary from machine to machine, the ratio much less.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import importlib.util
import io
import itertools
import json
import multiprocessing
import os
import pstats
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TENSORHUB_PROGRESS", "0")


@dataclass
class Result:
    """One comparison: median seconds of tensorhub and of the baseline over ``repeats`` runs."""

    bench: str
    backend: str
    what: str
    baseline: str
    tensorhub_s: float
    baseline_s: float
    samples_tensorhub: list[float] = field(default_factory=list)
    samples_baseline: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.tensorhub_s / self.baseline_s if self.baseline_s > 0 else float("inf")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def _timed(run: Callable[[Any], Any], setup: Callable[[], Any] | None,
           teardown: Callable[[Any], Any] | None) -> float:
    state = setup() if setup else None
    gc.collect()
    try:
        start = time.perf_counter()
        run(state)
        return time.perf_counter() - start
    finally:
        if teardown:
            teardown(state)


def compare(bench: str, backend: str, what: str, baseline: str, *, repeats: int,
            tensorhub: Callable[[Any], Any], raw: Callable[[Any], Any],
            setup_tensorhub: Callable[[], Any] | None = None, setup_raw: Callable[[], Any] | None = None,
            teardown_tensorhub: Callable[[Any], Any] | None = None,
            teardown_raw: Callable[[Any], Any] | None = None, warmup: int = 1,
            verbose: bool = True) -> Result:
    """Time ``raw`` and ``tensorhub`` alternately ``repeats`` times; keep the medians.

    Each run gets a fresh state from its ``setup_*`` (untimed) and hands it to ``teardown_*``
    (untimed). ``warmup`` untimed runs of each side come first: imports, caches and, on a VM,
    the first touch of memory pages the guest has never used (slow on this Firecracker VM) are
    paid there. Alternating the two sides spreads any drift of the machine (page cache, other
    load) over both instead of charging it to one.
    """
    hub_samples: list[float] = []
    raw_samples: list[float] = []
    for _ in range(warmup):
        _timed(raw, setup_raw, teardown_raw)
        _timed(tensorhub, setup_tensorhub, teardown_tensorhub)
    for _ in range(repeats):
        raw_samples.append(_timed(raw, setup_raw, teardown_raw))
        hub_samples.append(_timed(tensorhub, setup_tensorhub, teardown_tensorhub))
    result = Result(bench, backend, what, baseline, statistics.median(hub_samples),
                    statistics.median(raw_samples), hub_samples, raw_samples)
    if verbose:
        print(f"  {backend:8} {what:42} {fmt_seconds(result.tensorhub_s):>9} vs {fmt_seconds(result.baseline_s):>9}"
              f"  x{fmt_ratio(result.ratio)}", flush=True)
    return result


def fmt_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(ratio: float) -> str:
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}"


def table(results: list[Result]) -> str:
    """A Markdown table of the results (paste-able into README.md)."""
    lines = ["| bench | backend | tensorhub operation | baseline | tensorhub | baseline | ratio |",
             "| --- | --- | --- | --- | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r.bench} | {r.backend} | {r.what} | {r.baseline} | {fmt_seconds(r.tensorhub_s)} "
                     f"| {fmt_seconds(r.baseline_s)} | {fmt_ratio(r.ratio)} |")
    return "\n".join(lines)


def write_json(results: list[Result], path: str, **meta: Any) -> None:
    Path(path).write_text(json.dumps({"meta": meta, "results": [r.to_json() for r in results]}, indent=2))


def profile(label: str, run: Callable[[], Any], top: int = 15) -> str:
    """Run ``run`` once under cProfile, threads it starts included; return the top entries as text.

    tensorhub compresses, hashes and writes chunks in a thread pool, so the main thread alone
    would only show it waiting. Each new thread gets its own profiler (``threading.setprofile``)
    and their statistics are merged: times then add up over threads (CPU time, not wall time).
    Two listings: by own time (where the work is) and by cumulative time (who calls it).
    """
    main = cProfile.Profile()
    workers: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_in_thread(frame: Any, event: str, arg: Any) -> None:
        worker = cProfile.Profile()
        with lock:
            workers.append(worker)
        worker.enable()  # replaces this hook for the rest of the thread's life

    threading.setprofile(start_in_thread)
    main.enable()
    try:
        run()
    finally:
        main.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
    out = io.StringIO()
    out.write(f"--- cProfile: {label} ({len(workers)} worker threads merged)\n")
    stats = pstats.Stats(main, stream=out)
    with lock:
        for worker in workers:
            stats.add(worker)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def for_each_size(name: str, sizes: tuple[int, ...], tmpdir: str | None,
                  bench_size: Callable[[int, Path], list[Result]]) -> list[Result]:
    """``bench_size(size, tmp)`` for each size, each in a fresh temporary directory removed afterwards."""
    results: list[Result] = []
    for size in sizes:
        tmp = Path(tempfile.mkdtemp(prefix=f"tensorhub-bench-{name}-", dir=tmpdir))
        try:
            results += bench_size(size, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


def parse_ints(text: str) -> tuple[int, ...]:
    """``"40,400"`` -> ``(40, 400)``: the comma-separated sizes and counts the scripts take."""
    return tuple(int(s) for s in text.split(",") if s.strip())


def common_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes; each script adds its own with ``add_arguments``."""
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and 3 repeats: a smoke test")
    parser.add_argument("--repeats", type=int, default=None, help="runs per side; the median is kept (default 5)")
    parser.add_argument("--backends", default="file,mongodb", help="comma-separated, for logs and tasks: file,mongodb")
    parser.add_argument("--tmpdir", default=None, help="where the temporary stores go (default: the system temp dir)")
    parser.add_argument("--profile", action="store_true", help="also print cProfile of the tensorhub side")
    parser.add_argument("--json", default=None, help="also write the results and the machine to this JSON file")
    return parser


def repeats_of(args: argparse.Namespace) -> int:
    return args.repeats or (3 if args.quick else 5)


def run_and_report(benches: list[Any], args: argparse.Namespace) -> int:
    """Run benchmark modules and print one table of ratios (and each module's extra lines).

    A module provides ``from_args(args, extras) -> list[Result]`` (``extras`` collects what goes
    into the JSON beside the results, e.g. memory figures) and may provide
    ``report(results, extras) -> list[str]`` for lines printed after the table.
    """
    meta = machine()
    print(" ".join(f"{k}={v}" for k, v in meta.items()), flush=True)
    started = time.perf_counter()
    results: list[Result] = []
    extras: dict[str, Any] = {}
    for bench in benches:
        results += bench.from_args(args, extras)
    elapsed = time.perf_counter() - started
    print("\nratio = tensorhub / baseline (median of each); < 1 means tensorhub is faster\n")
    print(table(results))
    for bench in benches:
        lines = bench.report(results, extras) if hasattr(bench, "report") else []
        if lines:
            print("\n" + "\n".join(lines))
    load_after = round(os.getloadavg()[0], 2)
    print(f"\n{len(results)} comparisons in {elapsed:.0f} s; 1-minute load average {meta['load_avg_1m']} before, "
          f"{load_after} after (other work on the machine makes the figures noisier)")
    if args.json:
        write_json(results, args.json, elapsed_s=elapsed, load_avg_1m_after=load_after, **extras, **meta)
    return 0


def bench_main(bench: Any, argv: list[str] | None = None) -> int:
    """The ``main()`` of one benchmark script: its options plus the common ones, then run and report."""
    parser = common_parser(bench.__doc__ or "")
    bench.add_arguments(parser)
    return run_and_report([bench], parser.parse_args(argv))


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import platform

    import numpy

    import tensorhub

    model, flags = "", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    simd = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other"
    return {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "cpu": f"{model} ({simd})",
            "blake3_gb_s": blake3_speed(), "load_avg_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "numpy": numpy.__version__,
            "tensorhub": getattr(tensorhub, "__version__", "?"), "tensorhub_at": _source_of(tensorhub)}


def blake3_speed(size: int = 64 << 20) -> float:
    """One thread's BLAKE3 throughput in GB/s (best of 3): what every dataset save and load pays per byte.

    Chunks are named and verified by BLAKE3, so dataset ratios against np.save/np.load depend on
    it: ~8 GB/s with AVX-512, ~2-3 GB/s with AVX2 only.
    """
    from blake3 import blake3

    data = os.urandom(size)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        blake3(data).digest()
        best = min(best, time.perf_counter() - started)
    return round(size / best / 1e9, 1)


def _source_of(module: Any) -> str:
    """Where the measured tensorhub came from: its directory, and the git commit when it is a checkout."""
    import subprocess

    where = str(Path(module.__file__).resolve().parent)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "-C", where, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()
        return f"{where} @ {commit}{' + uncommitted changes' if dirty else ''}"
    return where


@contextlib.contextmanager
def mongodb_server() -> Iterator[str]:
    """The test MongoDB-wire server of :mod:`tensorhub.testing.servers` (SecantusDB, or
    ``$TENSORHUB_TEST_MONGODB_URI``); yields its URI without a database."""
    try:
        from tensorhub.testing.servers import mongodb_server as server
    except ImportError:
        # tensorhub.testing's __init__ also imports the pytest contract suite; the benchmarks need
        # only servers.py, so load that file alone rather than require pytest.
        import tensorhub

        path = Path(tensorhub.__file__).parent / "testing" / "servers.py"
        spec = importlib.util.spec_from_file_location("_tensorhub_bench_servers", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        server = module.mongodb_server
    with server() as uri:
        yield uri


def _serve(conn: Any) -> None:
    """Child process: run :func:`mongodb_server` until the parent says stop."""
    os.environ.setdefault("TENSORHUB_PROGRESS", "0")
    with mongodb_server() as uri:
        conn.send(uri)
        conn.recv()


class MongoServers:
    """Fresh test MongoDB servers, each in its own process, for one timed run each.

    Why not one server for the whole benchmark: SecantusDB runs as a one-node replica set whose
    oplog keeps up to 100,000 entries, and every write gets slower as it grows (2,000 single
    inserts took 2.7 s on a new server and 18 s on the same server after 6,000 more). A fresh
    server per timed run gives both sides the same conditions. A separate process, like a real
    ``mongod``, keeps the server's CPU and garbage collection out of the client's GIL.
    Stopping a server takes ~2 s of idle waiting in SecantusDB, so it is left to finish in the
    background and joined in :meth:`close`.
    """

    def __init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._running: dict[int, tuple[Any, Any]] = {}
        self._stopping: list[Any] = []
        self._ids = itertools.count()

    def start(self) -> tuple[int, str]:
        """Start a server; return a handle for :meth:`stop` and the server's URI (no database).

        With ``$TENSORHUB_TEST_MONGODB_URI`` set every "server" is that external one, so callers
        also drop what they created.
        """
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_serve, args=(child,), daemon=True)
        process.start()
        if not parent.poll(120):
            process.terminate()
            raise RuntimeError("the test MongoDB server did not start within 120 s")
        uri = parent.recv()
        handle = next(self._ids)
        self._running[handle] = (process, parent)
        return handle, uri

    def stop(self, handle: int) -> None:
        process, parent = self._running.pop(handle)
        with contextlib.suppress(OSError):
            parent.send("stop")
        self._stopping.append(process)

    def close(self) -> None:
        for handle in list(self._running):
            self.stop(handle)
        for process in self._stopping:
            process.join(30)
            if process.is_alive():
                process.terminate()
                process.join(5)
        self._stopping.clear()

    def __enter__(self) -> MongoServers:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
