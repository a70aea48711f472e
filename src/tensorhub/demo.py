"""``tensorhub demo``: TensorLayer's tutorial workflow, end to end, on a dataset shipped with scikit-learn.

1. save the digits dataset (train/validation/test splits);
2. dispatch three training tasks with different hidden sizes;
3. run them with runner processes (``tensorhub worker``), which pull from the store;
4. pick the best model by test accuracy, reload it and check it in this process;
5. return a table of the tasks and their results, and a comparison of the runs (``compare_runs``:
   parameters, results, and the final and best loss from each run's logs), best first, ending with
   the ``tensorhub ui`` command that shows them in a browser.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tensorhub.context import ENV_URI
from tensorhub.errors import BackendNotInstalledError
from tensorhub.hub import TensorHub
from tensorhub.redaction import redact_uri
from tensorhub.table import format_table

log = logging.getLogger(__name__)

PROJECT = "demo"
TASK_NAME = "digits"
HIDDEN_SIZES = (8, 32, 64)


def _digits() -> tuple[np.ndarray, ...]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise BackendNotInstalledError("the demo needs scikit-learn: pip install 'tensorhub[demo]'") from exc
    digits = load_digits()  # ships inside scikit-learn: nothing is downloaded
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(X))
    X, y = X[order], y[order]
    a, b = int(0.6 * len(X)), int(0.8 * len(X))
    return X[:a], y[:a], X[a:b], y[a:b], X[b:], y[b:]


def _accuracy(params: dict, X: np.ndarray, y: np.ndarray) -> float:
    hidden = np.maximum(X @ params["W1"] + params["b1"], 0)
    return float(np.mean(np.argmax(hidden @ params["W2"] + params["b2"], axis=1) == y))


def ui_command_line(uri: str) -> str:
    """The ``tensorhub ui`` command that shows the demo's results (a password in ``uri`` redacted:
    pass it through $TENSORHUB_URI instead).

    Args:
        uri: The demo's store URI.
    """
    return f"tensorhub ui --uri {redact_uri(uri)} --project {PROJECT}"


def run_demo(uri: str, runners: int = 2, max_iter: int = 200) -> str:
    """Run the whole workflow on ``uri`` and return the results table."""
    with TensorHub(uri, project_name=PROJECT) as hub:
        for delete in (hub.delete_tasks, hub.delete_model, hub.delete_datasets, hub.delete_training_log,
                       hub.delete_validation_log):
            delete()  # the demo starts from an empty project each time
        splits = _digits()
        hub.save_dataset(splits, "digits", description="scikit-learn digits, 60/20/20 split")
        log.info("saved dataset 'digits' (%d training rows)", len(splits[0]))

        script = Path(__file__).with_name("demo_task.py")
        for n_hidden in HIDDEN_SIZES:
            hub.create_task(TASK_NAME, script, hyper_parameters={"n_hidden": n_hidden, "max_iter": max_iter},
                            saved_result_keys=["test_accuracy", "val_accuracy"], description=f"{n_hidden} hidden")

        # the URI goes in the environment, not on the command line, where `ps` would show its password
        command = [sys.executable, "-m", "tensorhub", "worker", "--task-name", TASK_NAME,
                   "--project", PROJECT, "--idle-exit", "2", "--poll", "0.5"]
        workers = [subprocess.Popen(command, env={**os.environ, ENV_URI: uri}) for _ in range(runners)]
        try:
            tasks = hub.wait_for_tasks(TASK_NAME, timeout=600)
        finally:
            for worker in workers:
                try:
                    worker.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    worker.kill()

        best = hub.find_model(model_name="digits-mlp", sort=[("test_accuracy", -1)])
        X_test, y_test = splits[4], splits[5]
        checked = _accuracy(best, X_test, y_test)
        rows = [{"hidden": t["hyper_parameters"]["n_hidden"], "status": t["status"],
                 "runner pid": (t.get("owner") or {}).get("pid"),
                 "val acc": (t.get("result") or {}).get("val_accuracy"),
                 "test acc": (t.get("result") or {}).get("test_accuracy")}
                for t in sorted(tasks, key=lambda t: t["hyper_parameters"]["n_hidden"])]
        table = format_table(rows, ["hidden", "status", "runner pid", "val acc", "test acc"])
        # loss sorted ascending: its best over the logged steps is its minimum
        runs = hub.compare_runs(TASK_NAME, keys=["test_accuracy", "loss"], sort=[("test_accuracy", -1), ("loss", 1)])
        comparison = format_table(runs, ["run_name", "params.n_hidden", "attempt", "duration_s", "test_accuracy",
                                         "loss", "best_loss"])
        return (f"{table}\n\nruns, best first (compare_runs; loss: final and best over the logged steps):\n"
                f"{comparison}\n\nbest model: {best._n_hidden} hidden units, test accuracy {best._test_accuracy:.4f} "
                f"(re-checked in this process: {checked:.4f})\nstore: {hub}\n\n"
                f"see the runs, their curves and the models in a browser (pip install 'tensorhub[ui]'):\n"
                f"  {ui_command_line(uri)}")
