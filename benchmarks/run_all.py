"""Run every benchmark and print one table of ``tensorhub / baseline`` ratios.

    python benchmarks/run_all.py                      # full run, 4-6 minutes on 2 cores
    python benchmarks/run_all.py --quick              # ~1 minute: N=300 log rows, 8 MiB arrays, 40 MiB
                                                      # stream, 60 tasks, 3 repeats
    python benchmarks/run_all.py --only datasets --size-mb 40,400,1000
    python benchmarks/run_all.py --only streaming --stream-mb 200,1000
    python benchmarks/run_all.py --only tasks --tasks 500 --runners 1,2,4
    python benchmarks/run_all.py --backends file      # skip the MongoDB server
    python benchmarks/run_all.py --json /tmp/bench.json

Everything is written under a temporary directory (``--tmpdir`` picks where; the default is the
system's), removed at the end. See README.md beside this file for what each line measures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_datasets  # noqa: E402
import bench_logs  # noqa: E402
import bench_streaming  # noqa: E402
import bench_tasks  # noqa: E402
from _common import Result, machine, table, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the tensorhub benchmarks and print a table of ratios.")
    parser.add_argument("--quick", action="store_true", help="small sizes and 3 repeats (about a minute)")
    parser.add_argument("--only", choices=("logs", "datasets", "streaming", "tasks"), default=None,
                        help="run one benchmark")
    parser.add_argument("--repeats", type=int, default=None, help="runs per side; the median is kept (default 5)")
    bench_logs.add_arguments(parser)
    bench_datasets.add_arguments(parser)
    bench_streaming.add_arguments(parser)
    bench_tasks.add_arguments(parser)
    parser.add_argument("--tmpdir", default=None, help="where the temporary stores go (default: the system temp dir)")
    parser.add_argument("--profile", action="store_true", help="print cProfile of the tensorhub side")
    parser.add_argument("--json", default=None, help="also write the results and the machine to this JSON file")
    args = parser.parse_args(argv)

    repeats = args.repeats or (3 if args.quick else 5)
    meta = machine()
    print(" ".join(f"{k}={v}" for k, v in meta.items()), flush=True)
    started = time.perf_counter()
    results: list[Result] = []
    if args.only in (None, "logs"):
        n = args.n or (300 if args.quick else 2000)
        results += bench_logs.run(n, repeats, tuple(args.backends.split(",")), args.tmpdir, args.profile)
    if args.only in (None, "datasets"):
        sizes = args.size_mb or ((8,) if args.quick else (40, 400))
        results += bench_datasets.run(sizes, repeats, args.tmpdir, args.profile)
    memory: list[dict] = []
    if args.only in (None, "streaming"):
        sizes = args.stream_mb or ((40,) if args.quick else (200,))
        results += bench_streaming.run(sizes, repeats, args.tmpdir, args.profile, memory)
    if args.only in (None, "tasks"):
        n = args.tasks or (60 if args.quick else 200)
        results += bench_tasks.run(n, repeats, args.runners, tuple(args.backends.split(",")), args.tmpdir,
                                   args.profile)
    elapsed = time.perf_counter() - started

    print()
    print("ratio = tensorhub / baseline (median of each); < 1 means tensorhub is faster")
    print()
    print(table(results))
    if memory:
        print()
        print("peak extra memory of one streamed epoch, as a fraction of the dataset's size")
        print()
        print(bench_streaming.memory_table(memory))
    rates = bench_tasks.tasks_per_second(results)
    if rates:
        print()
        print("\n".join(rates))
    load_after = round(os.getloadavg()[0], 2)
    print(f"\n{len(results)} comparisons in {elapsed:.0f} s; 1-minute load average {meta['load_avg_1m']} before, "
          f"{load_after} after (other work on the machine makes the figures noisier)")
    if args.json:
        write_json(results, args.json, elapsed_s=elapsed, load_avg_1m_after=load_after, memory=memory, **meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
