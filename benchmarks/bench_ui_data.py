"""The chart data of the dashboard for one big run: a metric's series of a run with N log rows.

Measured on a ``file://`` store holding one interactive run with N training rows (``step``,
``loss``, ``acc``, plus the run's ``task_id``/``attempt``/``time``):

* ``log_series`` (one query for the run's rows of the metric, sorted by step, then min/max
  downsampling to 2,000 points) against the raw read of the same rows
  (``find_training_logs(task_id=..., sort=[("step", 1)])``): the ratio is the cost of building
  the series on top of reading the rows;
* ``downsample`` alone on N numpy points;
* the JSON size of one chart (``figure_logs(...).to_json()``) and of the series as the dashboard's
  API sends it (``json.dumps(series)``); target: < 500 KB per chart;
* ``run_metrics`` (reads the run's rows of each kind).

Targets (issue 13): a chart's data < 1 s and < 500 KB. Nothing here asserts a timing.

Measured (2 shared cores, N=1,000,000, one repeat): filling 318 s; reading the run's rows 75 s;
``log_series`` 116 s (then with one more query condition than now); ``downsample`` alone 0.09 s;
one chart 60 KB of JSON (2,000 points); ``run_metrics`` 74 s. N=100,000 on a quieter machine: read
2.7 s, ``log_series`` 3.3 s, 57 KB. The size target is met; the time is
the file:// backend's: it decodes every row of the run and matches ``task_id`` (an ObjectId) in
Python (issue 14 pushes such queries into SQL). Since the per-run log digests (``log_digest.py``),
``log_series`` and ``run_metrics`` read a run's digest, not its rows: tens of milliseconds at any N.

    python benchmarks/bench_ui_data.py              # N=1,000,000
    python benchmarks/bench_ui_data.py --rows 100000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TENSORHUB_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tensorhub import TensorHub  # noqa: E402
from tensorhub.plots import downsample, figure_logs, log_series, run_metrics  # noqa: E402

log = logging.getLogger("bench_ui_data")
BATCH = 100_000


def _median_seconds(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def fill(hub: TensorHub, rows: int) -> Any:
    """One interactive run with ``rows`` training rows (saved in batches inside the run: stamped with it)."""
    rng = np.random.default_rng(0)
    with hub.start_run("big", lr=0.1) as run:
        for start in range(0, rows, BATCH):
            steps = range(start, min(start + BATCH, rows))
            noise = rng.normal(scale=0.05, size=len(steps))
            hub.save_training_logs([{"step": s, "loss": 1.0 / (1 + s / 1000) + float(e), "acc": s / rows}
                                    for s, e in zip(steps, noise)])
        run.log(kind="validation", step=0, acc=0.9)
    return run.id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="Log rows of the run (default 1,000,000).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs of each measurement (median).")
    parser.add_argument("--max-points", type=int, default=2000, help="Points per series.")
    parser.add_argument("--tmpdir", default=None, help="Where the file:// store goes (default: a temp dir).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tmp = Path(tempfile.mkdtemp(prefix="bench-ui-", dir=args.tmpdir))
    try:
        hub = TensorHub(f"file://{tmp / 'hub'}", project_name="bench")
        start = time.perf_counter()
        run_id = fill(hub, args.rows)
        log.info("filled a run with %d rows in %.1f s", args.rows, time.perf_counter() - start)

        raw, rows = _median_seconds(lambda: hub.find_training_logs(task_id=run_id, sort=[("step", 1)]),
                                    args.repeats)
        assert len(rows) == args.rows
        del rows
        built, series = _median_seconds(lambda: log_series(hub, "loss", runs=[run_id], max_points=args.max_points),
                                        args.repeats)
        xs, ys = np.arange(args.rows), np.random.default_rng(1).normal(size=args.rows)
        alone, _ = _median_seconds(lambda: downsample(xs, ys, args.max_points), args.repeats)
        figure_json = figure_logs(series, "loss", "step").to_json()
        api_json = json.dumps(series)
        metrics_s, metrics = _median_seconds(lambda: run_metrics(hub, run_id), 1)
        (s,) = series
        report = {
            "rows": args.rows, "points": len(s["x"]), "n_points": s["n_points"],
            "read_rows_s": round(raw, 3), "log_series_s": round(built, 3),
            "log_series_over_read": round(built / raw, 2), "downsample_numpy_s": round(alone, 4),
            "chart_json_kb": round(len(figure_json) / 1024, 1), "series_json_kb": round(len(api_json) / 1024, 1),
            "run_metrics_s": round(metrics_s, 3), "metrics": metrics,
            "target_chart_under_1s": built < 1.0, "target_chart_under_500kb": len(figure_json) < 500 * 1024,
        }
        print(json.dumps(report, indent=2))
        hub.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
