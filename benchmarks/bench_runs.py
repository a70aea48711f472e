"""Per-step logging in a run: ``run.log`` once per step against one ``save_training_logs`` of the same rows.

Measured, as ``tensorhub / baseline`` of medians over ``--repeats`` alternating runs:

* ``run.log x N``: an interactive run (``hub.start_run``) calling ``run.log(step=i, loss=..., acc=...)``
  N times, then ``run.end()`` (which writes the last batch and records the run), against
  ``hub.save_training_logs(rows)`` of the same N rows in one batch on the same backend. The
  target is a ratio <= 1.5: buffering makes per-step logging cost about one batch write per
  1,000 rows (``run_log.FLUSH_ROWS``);
* ``run.log x N vs mlflow``: the same loop against MLflow's ``MlflowClient.log_metric`` per step
  (file store), if MLflow is installed (optional; skipped otherwise).

Every run starts on an empty ``file://`` store.

    python benchmarks/bench_runs.py              # N=100000
    python benchmarks/bench_runs.py --quick      # N=10000, 3 repeats
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Result, bench_main, compare, profile, repeats_of  # noqa: E402

from tensorhub import TensorHub  # noqa: E402

BENCH = "runs"
PROJECT = "bench"
_unique = itertools.count()


def _rows(n: int) -> list[dict[str, Any]]:
    return [{"step": i, "loss": 1.0 / (i + 1), "acc": i / n} for i in range(n)]


def bench_file(n: int, repeats: int, tmp: Path, show_profile: bool = False) -> list[Result]:
    rows = _rows(n)
    results = []

    def new_hub() -> TensorHub:
        return TensorHub(f"file://{tmp / f'hub-{next(_unique)}'}", project_name=PROJECT)

    def close(hub: TensorHub) -> None:
        hub.close()

    def per_step(hub: TensorHub) -> None:
        run = hub.start_run("bench", lr=0.1)
        for row in rows:
            run.log(step=row["step"], loss=row["loss"], acc=row["acc"])
        run.end()

    results.append(compare(BENCH, "file", f"run.log x{n} (+ start/end)", f"save_training_logs({n} rows)",
                           repeats=repeats, tensorhub=per_step, raw=lambda hub: hub.save_training_logs(rows),
                           setup_tensorhub=new_hub, setup_raw=new_hub, teardown_tensorhub=close, teardown_raw=close))
    hub = new_hub()
    per_step(hub)
    assert len(hub.find_training_logs(task_id=hub.find_runs()[0]["id"])) == n, "run.log lost rows"
    if show_profile:
        print(profile(f"file: run.log x{n}", lambda: per_step(hub)))
    hub.close()
    results += _bench_mlflow(n, repeats, tmp, new_hub, per_step, close)
    return results


def _bench_mlflow(n: int, repeats: int, tmp: Path, new_hub: Any, per_step: Any, close: Any) -> list[Result]:
    """The same loop through MLflow's client (``log_metric`` per step and metric), when it is installed."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        print("[runs] mlflow is not installed: the comparison with MlflowClient.log_metric is skipped", flush=True)
        return []
    rows = _rows(n)

    def new_client() -> tuple[Any, str]:
        client = MlflowClient(tracking_uri=f"file://{tmp / f'mlruns-{next(_unique)}'}")
        experiment = client.create_experiment("bench")
        return client, client.create_run(experiment).info.run_id

    def mlflow_loop(state: tuple[Any, str]) -> None:
        client, run_id = state
        for row in rows:
            client.log_metric(run_id, "loss", row["loss"], step=row["step"])
            client.log_metric(run_id, "acc", row["acc"], step=row["step"])
        client.set_terminated(run_id)

    return [compare(BENCH, "file", f"run.log x{n} (+ start/end)", "mlflow log_metric per step", repeats=repeats,
                    tensorhub=per_step, raw=mlflow_loop, setup_tensorhub=new_hub, setup_raw=new_client,
                    teardown_tensorhub=close)]


def run(n: int = 100_000, repeats: int = 5, tmpdir: str | None = None, show_profile: bool = False) -> list[Result]:
    """Run the run-logging benchmarks; stores live in a temporary directory that is removed afterwards."""
    print(f"[runs] N={n}, repeats={repeats}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="tensorhub-bench-runs-", dir=tmpdir))
    try:
        return bench_file(n, repeats, tmp, show_profile)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 100000, 10000 with --quick)")


def from_args(args: argparse.Namespace, extras: dict[str, Any]) -> list[Result]:
    n = args.steps or (10_000 if args.quick else 100_000)
    return run(n, repeats_of(args), args.tmpdir, args.profile)


def main(argv: list[str] | None = None) -> int:
    return bench_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
