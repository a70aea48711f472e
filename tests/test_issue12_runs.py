"""Issue 12 item 1: runs are first-class.

What a run (a task attempt or an interactive run) saves carries its ``task_id`` and ``attempt``
on every backend; interactive runs are task records with parameters, heartbeat and outcome;
``run.log``/``hub.log`` buffer rows; ``find_runs``/``compare_runs`` list and compare runs;
``as_frame=True`` works on every ``find_*`` that returns rows.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas
import pytest
import torch

from tensorhub import TensorHub
from tensorhub import run_log as _run_log
from tensorhub.errors import BackendUnavailableError, InvalidArgumentError, InvalidArgumentTypeError, NoActiveRunError

from conftest import SPLIT_BLOBS, pid_alive, wait_until, write_script

WAIT = 30.0  # upper bound of every wait in this file (seconds)

#: a task script that saves one record of each kind, plus rows through hub.log (buffered)
SAVES_EVERYTHING = """
    import numpy as np
    from tensorhub import TensorHub
    hub = TensorHub()
    hub.save_training_log(step=0, loss=1.0)
    hub.log(step=1, loss=0.5)
    TensorHub().log(step=0, kind="validation", acc=0.75)
    hub.save_model([np.ones(2)], "m")
    hub.save_dataset([np.ones(2)], "d")
    done = True
"""


def _check_saved_in_run(hub: TensorHub, task_id, attempt: int) -> None:
    """Every record the SAVES_EVERYTHING script saved carries the run's task_id and attempt."""
    training = hub.find_training_logs(task_id=task_id, attempt=attempt, sort=[("step", 1)])
    assert [r["step"] for r in training] == [0, 1] and [r["loss"] for r in training] == [1.0, 0.5]
    assert hub.find_training_logs(task_id=str(task_id)) == hub.find_training_logs(task_id={"_id": task_id})
    (validation,) = hub.find_validation_logs(task_id=str(task_id))
    assert validation["acc"] == 0.75 and validation["attempt"] == attempt
    (model,) = hub.find_all_models(task_id=task_id)
    assert model.tensorhub_record["attempt"] == attempt
    (dataset,) = hub.find_dataset_records("d", task_id=str(task_id))
    assert dataset["task_id"] == task_id and dataset["attempt"] == attempt
    saved = hub.find_run_records(task_id)
    assert saved == {"training_logs": 2, "validation_logs": 1, "testing_logs": 0, "models": [model.tensorhub_record["_id"]],
                     "datasets": [dataset["_id"]]}


# ---------------------------------------------------------------------------- stamping
def test_item01_records_saved_in_an_in_process_task_carry_task_id_and_attempt(hub: TensorHub, tmp_path: Path) -> None:
    task_id = hub.create_task("t", write_script(tmp_path, SAVES_EVERYTHING), saved_result_keys=["done"])
    assert hub.run_task("t", in_process=True)
    assert hub.find_tasks("t")[0]["status"] == "finished"
    _check_saved_in_run(hub, task_id, 1)


def test_item01_records_saved_in_a_task_process_carry_task_id_and_attempt(task_hub: TensorHub, tmp_path: Path) -> None:
    task_id = task_hub.create_task("t", write_script(tmp_path, SAVES_EVERYTHING), saved_result_keys=["done"])
    assert task_hub.run_task("t")
    (task,) = task_hub.find_tasks("t")
    assert task["status"] == "finished", task.get("error")
    _check_saved_in_run(task_hub, task_id, 1)  # hub.log's buffered rows were written before the child exited


def test_item01_run_fields_are_refused_from_users(hub: TensorHub) -> None:
    task_id = "0" * 24  # any id: the field is refused whatever its value
    for save in (lambda: hub.save_training_log(loss=1.0, task_id=task_id),
                 lambda: hub.save_validation_logs([{"acc": 1.0, "attempt": 2}]),
                 lambda: hub.save_dataset([np.ones(2)], "d", attempt=1),
                 lambda: hub.save_dataset([np.ones(2)], "d", task_id=task_id),
                 lambda: hub.save_model([np.ones(2)], "m", attempt=1)):
        with pytest.raises(InvalidArgumentError, match="written by tensorhub itself"):
            save()
    assert not hub.find_training_logs() and not hub.find_validation_logs() and not hub.find_dataset_records()


@pytest.mark.slow
def test_item01_a_sigkilled_runners_retry_logs_attempt_2(task_hub: TensorHub, tmp_path: Path) -> None:
    script = write_script(tmp_path, """
        import os, time
        from tensorhub import TensorHub
        from tensorhub.context import current_attempt
        hub = TensorHub()
        hub.save_training_log(child_pid=os.getpid())
        for step in range(3):
            hub.log(step=step, loss=1.0 / (step + 1))  # buffered: written by time while the first attempt sleeps
        if current_attempt() == 1:
            time.sleep(600)  # the test kills the runner meanwhile
        done = True
    """)
    task_id = task_hub.create_task("retry", script, saved_result_keys=["done"])
    worker = subprocess.Popen([sys.executable, "-m", "tensorhub", "worker", task_hub.uri, "-p", task_hub.project_name,
                               "--poll", "0.1", "--lease", "2", "--task-name", "retry"],
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: len(task_hub.find_training_logs(attempt=1, step={"$exists": True})) == 3,
                    "the first attempt's rows")
        child_pid = task_hub.find_training_logs(child_pid={"$exists": True})[0]["child_pid"]
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        wait_until(lambda: not pid_alive(child_pid), "the orphaned task process to die")
    finally:
        worker.kill()
        worker.wait(10)
    wait_until(lambda: task_hub.run_task("retry", lease=5), "the lease to run out and the retry to run")
    (task,) = task_hub.find_tasks("retry")
    assert task["status"] == "finished" and task["attempts"] == 2, task.get("error")
    for attempt in (1, 2):
        rows = task_hub.find_training_logs(task_id=task_id, attempt=attempt, step={"$exists": True}, sort=[("step", 1)])
        assert [r["step"] for r in rows] == [0, 1, 2] and {r["attempt"] for r in rows} == {attempt}
    assert len(task_hub.find_training_logs(task_id=task_id, step={"$exists": True})) == 6


# ---------------------------------------------------------------------------- interactive runs
def test_item02_interactive_run_records_params_stamps_and_ends_finished(hub: TensorHub) -> None:
    with hub.start_run("mlp", lr=0.1, units=np.int64(8)) as run:
        (record,) = hub.find_tasks("mlp")
        assert record["status"] == "running" and record["run_type"] == "interactive"
        assert record["attempts"] == 1 and record["attempts_left"] == 0 and record["owner"]["pid"] == os.getpid()
        assert record["hyper_parameters"] == {"lr": 0.1, "units": 8}
        run.log(step=0, loss=1.0)
        hub.log(loss=0.5)  # the current run; step 1
        run.log(kind="validation", acc=0.8)
        model_id = hub.save_model([np.ones(2)], "m")
        dataset_id = hub.save_dataset([np.ones(2)], "d")
        with TensorHub(hub.uri, project_name=hub.project_name, blobs=SPLIT_BLOBS.get(hub.uri)) as other:
            other.save_testing_log(acc=0.7)  # another hub on the same store: stamped too
    assert run.ended and run.pending == 0
    (record,) = hub.find_tasks("mlp")
    assert record["status"] == "finished" and "lease_expires_at" not in record
    assert record["result"] == {"loss": 0.5, "validation_acc": 0.8}
    assert hub.find_run_records(run.id) == {"training_logs": 2, "validation_logs": 1, "testing_logs": 1,
                                            "models": [model_id], "datasets": [dataset_id]}
    assert [r["step"] for r in hub.find_training_logs(task_id=run.id, attempt=1, sort=[("step", 1)])] == [0, 1]
    hub.save_training_log(loss=0.1)  # after the run: not stamped
    assert "task_id" not in hub.find_training_logs(limit=1)[0]
    with pytest.raises(NoActiveRunError):
        run.log(loss=0.0)


def test_item02_interactive_run_that_raises_ends_failed_with_traceback(hub: TensorHub) -> None:
    with pytest.raises(ZeroDivisionError):
        with hub.start_run(lr=0.1) as run:
            run.log(loss=2.0)
            1 / 0
    (record,) = hub.find_tasks()
    assert record["task_name"] == "interactive" and record["status"] == "failed"
    assert record["error"].startswith("ZeroDivisionError") and "1 / 0" in record["traceback"]
    assert len(hub.find_training_logs(task_id=run.id)) == 1  # what it logged before is kept
    run2 = hub.start_run("manual")
    run2.log(loss=1.0)
    run2.end(result={"score": np.float32(0.5)})
    (record,) = hub.find_tasks("manual")
    assert record["status"] == "finished" and record["result"] == {"loss": 1.0, "score": 0.5}


def test_item02_a_killed_interactive_process_ends_failed_after_its_lease(task_hub: TensorHub, tmp_path: Path) -> None:
    script = write_script(tmp_path, """
        import sys, time
        from tensorhub import TensorHub
        hub = TensorHub(project_name=sys.argv[1])
        run = hub.start_run("doomed", lease=1)
        run.log(step=0, loss=1.0)
        run.flush()
        print(run.id, flush=True)
        time.sleep(600)
    """, "interactive.py")
    process = subprocess.Popen([sys.executable, str(script), task_hub.project_name], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "TENSORHUB_URI": task_hub.uri})
    try:
        run_id = process.stdout.readline().strip()
        assert run_id, "the interactive script did not start its run"
        assert task_hub.find_runs(run_name="doomed")[0]["status"] == "running"
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        process.kill()
        process.wait(10)
        process.stdout.close()
    # find_runs runs the queue's expiry sweep: the lease (1 s) runs out, no attempt is left
    wait_until(lambda: task_hub.find_runs(run_name="doomed")[0]["status"] != "running", "the lease to run out")
    (run,) = task_hub.find_runs(run_name="doomed")
    assert run["status"] == "failed" and "lease" in run["error"] and str(run["id"]) == run_id
    assert run["metrics"]["loss"]["final"] == 1.0


def test_item02_an_open_run_ends_at_interpreter_exit(tmp_path: Path) -> None:
    uri = f"file://{tmp_path / 'store'}"
    body = """
        import sys
        from tensorhub import TensorHub
        run = TensorHub(sys.argv[1], project_name="p").start_run(sys.argv[2])
        for step in range(3):
            run.log(step=step, loss=float(step))
        if sys.argv[2] == "crashes":
            raise RuntimeError("uncaught")
    """
    script = write_script(tmp_path, body, "open_run.py")
    for name in ("exits", "crashes"):
        subprocess.run([sys.executable, str(script), uri, name], capture_output=True, timeout=60)
    with TensorHub(uri, project_name="p") as hub:
        exits, crashes = hub.find_runs(run_name="exits"), hub.find_runs(run_name="crashes")
        assert exits[0]["status"] == "finished" and exits[0]["metrics"]["loss"]["count"] == 3
        assert crashes[0]["status"] == "failed" and "RuntimeError: uncaught" in crashes[0]["error"]
        assert crashes[0]["metrics"]["loss"]["count"] == 3  # buffered rows were written at exit


# ---------------------------------------------------------------------------- run.log
def test_item03_run_log_takes_torch_and_numpy_scalars(hub: TensorHub) -> None:
    with hub.start_run() as run:
        run.log(step=np.int64(0), loss=torch.tensor(0.5), n=torch.tensor(3), acc=np.float32(0.25),
                ok=np.bool_(True), lr=np.array(0.125), one=torch.tensor([2.0]), note="warmup")
        with pytest.raises(InvalidArgumentTypeError, match="loss.item"):
            run.log(loss=torch.ones(2))
        with pytest.raises(InvalidArgumentTypeError):
            run.log(w=np.ones(3))
        with pytest.raises(InvalidArgumentError, match="set by tensorhub"):
            run.log(attempt=3)
    (row,) = hub.find_training_logs(task_id=run.id)
    assert {k: row[k] for k in ("step", "loss", "n", "acc", "ok", "lr", "one", "note")} == {
        "step": 0, "loss": 0.5, "n": 3, "acc": 0.25, "ok": True, "lr": 0.125, "one": 2.0, "note": "warmup"}
    assert type(row["n"]) is int and type(row["loss"]) is float and row["attempt"] == 1


def test_item03_hub_log_outside_a_run_is_a_clear_error(hub: TensorHub) -> None:
    with pytest.raises(NoActiveRunError, match="start_run"):
        hub.log(loss=1.0)


def test_item03_rows_are_flushed_in_batches_and_kept_when_a_flush_fails(
        hub: TensorHub, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(_run_log, "FLUSH_ROWS", 3)
    monkeypatch.setattr(_run_log, "FLUSH_SECONDS", 3600.0)  # count only: no flush by time in this test
    run = hub.start_run()
    for step in range(4):
        run.log(step=step, loss=float(step))
    assert len(hub.find_training_logs(task_id=run.id)) == 3 and run.pending == 1  # one batch of 3 written
    real = _run_log.save_logs

    def unavailable(*args, **kwargs):
        raise BackendUnavailableError("store down")

    monkeypatch.setattr(_run_log, "save_logs", unavailable)
    with caplog.at_level(logging.WARNING, logger="tensorhub.run_log"):
        run.log(step=4, loss=4.0)
        run.log(step=5, loss=5.0)  # the batch is due, and fails: kept
    assert run.pending == 3 and "kept" in caplog.text
    monkeypatch.setattr(_run_log, "save_logs", real)
    run.end()
    assert sorted(r["step"] for r in hub.find_training_logs(task_id=run.id)) == [0, 1, 2, 3, 4, 5]


# ---------------------------------------------------------------------------- listing and comparing
def test_item04_find_runs_and_compare_runs_list_tasks_and_interactive_runs_best_first(
        hub: TensorHub, tmp_path: Path) -> None:
    for lr, losses in ((0.1, [1.0, 0.4, 0.5]), (0.01, [1.0, 0.2, 0.3]), (0.5, [2.0, 0.9, 0.8])):
        with hub.start_run("sweep", lr=lr) as run:
            for loss in losses:
                run.log(loss=loss)
    task_id = hub.create_task("sweep", write_script(tmp_path, """
        from tensorhub import TensorHub
        TensorHub().log(loss=0.6)
        loss = 0.6
    """), {"lr": 1.0}, saved_result_keys=["loss"])
    hub.run_task("sweep", in_process=True)
    runs = hub.find_runs(run_name="sweep")
    assert len(runs) == 4 and {r["run_type"] for r in runs} == {"task", "interactive"}
    (task,) = hub.find_runs(run_type="task")
    assert task["id"] == task_id and task["status"] == "finished" and task["params"] == {"lr": 1.0}
    assert task["attempt"] == 1 and task["host"] and task["duration_s"] >= 0 and task["result"] == {"loss": 0.6}
    assert task["metrics"] == {"loss": {"final": 0.6, "min": 0.6, "max": 0.6, "count": 1}}

    rows = hub.compare_runs("sweep", keys=["loss"], sort=[("loss", 1)])  # lowest final loss first
    assert [r["params.lr"] for r in rows] == [0.01, 0.1, 1.0, 0.5]
    assert [r["loss"] for r in rows] == [0.3, 0.5, 0.6, 0.8] and [r["best_loss"] for r in rows] == [0.2, 0.4, 0.6, 0.8]
    frame = hub.compare_runs("sweep", keys=["loss"], as_frame=True)  # default: higher first, best = max
    assert isinstance(frame, pandas.DataFrame) and list(frame["loss"]) == [0.8, 0.6, 0.5, 0.3]
    assert list(frame["best_loss"]) == [2.0, 0.6, 1.0, 1.0]


def test_item04_every_find_that_returns_rows_takes_as_frame(hub: TensorHub, tmp_path: Path) -> None:
    empty = hub.find_training_logs(as_frame=True)
    assert isinstance(empty, pandas.DataFrame) and empty.empty
    hub.save_training_logs([{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}])
    hub.save_validation_log(acc=0.5)
    hub.save_testing_log(acc=0.6)
    hub.save_dataset([np.ones(2)], "d", version="1")
    hub.create_task("t", write_script(tmp_path, "x = 1\n"))
    frame = hub.find_training_logs(as_frame=True, sort=[("step", 1)])
    assert isinstance(frame, pandas.DataFrame) and list(frame["loss"]) == [1.0, 0.5]
    assert list(hub.find_validation_logs(as_frame=True)["acc"]) == [0.5]
    assert list(hub.find_testing_logs(as_frame=True)["acc"]) == [0.6]
    assert list(hub.find_dataset_records(as_frame=True)["version"]) == ["1"]
    assert list(hub.find_tasks(as_frame=True)["task_name"]) == ["t"]
    assert list(hub.find_runs(as_frame=True)["status"]) == ["pending"]
    assert isinstance(hub.find_runs(run_name="none", as_frame=True), pandas.DataFrame)
