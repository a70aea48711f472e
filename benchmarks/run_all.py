"""Run every benchmark and print one table of ``tensorhub / baseline`` ratios.

    python benchmarks/run_all.py                      # every benchmark, see README.md for the time
    python benchmarks/run_all.py --quick              # small sizes and 3 repeats: a smoke test
    python benchmarks/run_all.py --only logs,datasets
    python benchmarks/run_all.py --only datasets --size-mb 40,400,1000
    python benchmarks/run_all.py --only streaming --stream-mb 200,1000
    python benchmarks/run_all.py --only tasks --tasks 500 --runners 1,2,4
    python benchmarks/run_all.py --backends file      # skip the MongoDB server
    python benchmarks/run_all.py --json /tmp/bench.json

Everything is written under a temporary directory (``--tmpdir`` picks where; the default is the
system's), removed at the end. See README.md beside this file for what each line measures.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import common_parser, run_and_report  # noqa: E402

#: benchmark name -> its script; models needs torch, s3 boto3 and moto, ui the ui extra, httpx and selenium
#: (the test extra has them all; ui measures in a browser only where Debian's chromium is installed)
BENCHES = ("logs", "runs", "datasets", "streaming", "tasks", "models", "s3", "ui", "copy")


def importable() -> tuple[dict[str, ModuleType], dict[str, str]]:
    """The benchmark modules that import here, and why the others do not."""
    modules, missing = {}, {}
    for name in BENCHES:
        try:
            modules[name] = importlib.import_module(f"bench_{name}")
        except ImportError as exc:
            missing[name] = str(exc)
    return modules, missing


def main(argv: list[str] | None = None) -> int:
    modules, missing = importable()
    parser = common_parser(__doc__ or "")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated benchmarks to run, of {','.join(BENCHES)} (default: all)")
    for bench in modules.values():
        bench.add_arguments(parser)
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {','.join(BENCHES)}")
    for name in names:
        if name in missing:
            print(f"[{name}] skipped: {missing[name]} (pip install -e '.[test]' installs what it needs)", flush=True)
    return run_and_report([modules[n] for n in names if n in modules], args)


if __name__ == "__main__":
    sys.exit(main())
