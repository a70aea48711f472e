"""Issue 16 item 4: resuming. ``run.checkpoint(model, step=...)`` / ``hub.checkpoint`` save a model record
stamped with the run's ``task_id``, ``attempt`` and ``checkpoint_step``; ``hub.latest_checkpoint(run)``
loads the newest over every attempt of the task, so attempt 2 resumes where attempt 1 stopped."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tensorhub import TensorHub
from tensorhub.errors import InvalidArgumentError, InvalidArgumentTypeError, NoActiveRunError

from conftest import pid_alive, wait_until, write_script

#: attempt 1 checkpoints steps 0..2 then fails (retried, retry_on_error=1); attempt 2 resumes after step 2
RESUMES = """
    import numpy as np
    from tensorhub import TensorHub
    from tensorhub.context import current_attempt
    hub = TensorHub()
    found = hub.latest_checkpoint()
    start = 0 if found is None else found._checkpoint_step + 1
    weights = np.zeros(4) if found is None else found[0]
    for step in range(start, 6):
        weights = weights + 1
        hub.log(step=step, loss=1.0 / (step + 1))
        hub.checkpoint([weights], step=step)
        if current_attempt() == 1 and step == 2:
            raise RuntimeError("attempt 1 dies here")
    total = float(weights.sum())
"""


def _check_resumed(hub: TensorHub, task_id) -> None:
    (task,) = hub.find_tasks(_id=task_id)
    assert task["status"] == "finished" and task["attempts"] == 2, task.get("error")
    steps = {a: [r["step"] for r in hub.find_training_logs(task_id=task_id, attempt=a, sort=[("step", 1)])]
             for a in (1, 2)}
    assert steps == {1: [0, 1, 2], 2: [3, 4, 5]}  # attempt 2 began after attempt 1's last checkpoint
    assert task["result"]["total"] == 4 * 6.0  # the weights went through 6 steps, not 3 or 9
    latest = hub.latest_checkpoint(task_id)
    assert latest._checkpoint_step == 5 and latest.tensorhub_record["attempt"] == 2
    np.testing.assert_array_equal(latest[0], np.full(4, 6.0))
    checkpoints = hub.find_all_models(task=task_id, checkpoint_step={"$exists": True})
    assert sorted((m._attempt, m._checkpoint_step) for m in checkpoints) == \
        [(1, 0), (1, 1), (1, 2), (2, 3), (2, 4), (2, 5)]
    assert {m.tensorhub_record["model_name"] for m in checkpoints} == {"resume/checkpoint"}


def test_item04_a_retried_task_resumes_from_attempt_1s_last_checkpoint(task_hub: TensorHub, tmp_path: Path) -> None:
    task_id = task_hub.create_task("resume", write_script(tmp_path, RESUMES), saved_result_keys=["total"],
                                   retry_on_error=1)
    assert task_hub.run_task("resume")  # attempt 1 fails and is re-queued
    assert task_hub.run_task("resume")  # attempt 2
    _check_resumed(task_hub, task_id)


@pytest.mark.slow
def test_item04_a_task_whose_runner_died_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    """A runner SIGKILLed mid-task: once the lease runs out, attempt 2 starts after the last checkpoint."""
    hub = TensorHub(f"file://{tmp_path / 'store'}", project_name="p")
    sleeps = "import os, time; hub.save_testing_log(child_pid=os.getpid()); time.sleep(600)  # the test kills the runner"
    script = write_script(tmp_path, RESUMES.replace('raise RuntimeError("attempt 1 dies here")', sleeps))
    task_id = hub.create_task("resume", script, saved_result_keys=["total"])
    worker = subprocess.Popen([sys.executable, "-m", "tensorhub", "worker", hub.uri, "-p", "p", "--poll", "0.1",
                               "--lease", "2", "--task-name", "resume"],
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: hub.find_testing_logs(child_pid={"$exists": True}), "attempt 1 to sleep after step 2")
        assert hub.latest_checkpoint(task_id)._checkpoint_step == 2
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        child = hub.find_testing_logs(child_pid={"$exists": True})[0]["child_pid"]
        wait_until(lambda: not pid_alive(child), "the orphaned task process to die")
    finally:
        worker.kill()
        worker.wait(10)
    wait_until(lambda: hub.run_task("resume", lease=5), "the lease to run out and attempt 2 to run")
    _check_resumed(hub, task_id)
    hub.close()


def test_item04_run_checkpoint_in_an_interactive_run_and_its_errors(hub: TensorHub) -> None:
    with hub.start_run("fit") as run:
        assert hub.latest_checkpoint() is None and hub.latest_checkpoint(run) is None
        net = torch.nn.Linear(3, 2)
        for step in (0, 1):
            run.log(step=step, loss=float(step))
            run.checkpoint(net, step=np.int64(step), val_loss=0.5)
        other = run.checkpoint(net, step=1, model_name="named")  # same step, saved later: it wins the tie
        with pytest.raises(InvalidArgumentTypeError, match="step must be an int"):
            run.checkpoint(net, step=1.5)
        with pytest.raises(InvalidArgumentError, match="belongs to its run"):
            run.checkpoint(net, step=3, task=run.id)
        assert len(hub.find_training_logs(task_id=run.id)) == 2  # a checkpoint writes the rows logged before it
    into = torch.nn.Linear(3, 2)
    for ref in (run, run.id, str(run.id), hub.find_runs(run_name="fit")[0], hub.find_tasks(_id=run.id)[0]):
        found = hub.latest_checkpoint(ref, into=into)
        assert found is into and found.tensorhub_record["_id"] == other and found._checkpoint_step == 1
    torch.testing.assert_close(into.weight, net.weight)
    # loaded into again: the attributes follow the new record (they were the first one's before issue 16)
    first = hub.find_model(task=run.id, checkpoint_step=0, into=into)
    assert first is into and into._checkpoint_step == 0 and into._model_name == "fit/checkpoint"
    assert hub.latest_checkpoint(run, into=into)._checkpoint_step == 1 and into._model_name == "named"
    record = hub.find_model(task=run.id, model_name="fit/checkpoint", sort=[("checkpoint_step", -1)],
                            into=torch.nn.Linear(3, 2))
    assert record._val_loss == 0.5 and record._attempt == 1
    with pytest.raises(NoActiveRunError):
        run.checkpoint(net, step=2)
    with pytest.raises(NoActiveRunError):
        hub.checkpoint(net, step=2)
    with pytest.raises(NoActiveRunError):
        hub.latest_checkpoint()
    with pytest.raises(InvalidArgumentError, match="checkpoint_step"):
        hub.save_model(net, "m", checkpoint_step=3)  # the field is the repository's
    with pytest.raises(InvalidArgumentError, match="run must be"):
        hub.latest_checkpoint("not an id")
    # deleting a run's checkpoints frees their chunks as any model delete does
    assert hub.delete_model(task=run.id, checkpoint_step={"$exists": True}) == 3
    assert hub.latest_checkpoint(run) is None


def test_item04_the_demo_task_checkpoints_and_resumes_from_them(tmp_path: Path) -> None:
    """``tensorhub demo``'s task script: checkpoints every 10 epochs; run again as attempt 2 of the same
    task (here: attempt 1 fails after its script ran, retry_on_error=1), it starts after the last one."""
    from tensorhub import demo

    hub = TensorHub(f"file://{tmp_path / 'store'}", project_name="demo")
    hub.save_dataset(demo._digits(), "digits")
    script = Path(demo.__file__).with_name("demo_task.py").read_text()
    failing = script + "\nfrom tensorhub.context import current_attempt\nassert current_attempt() > 1, 'attempt 1 dies'\n"
    task_id = hub.create_task("digits", write_script(tmp_path, failing), {"n_hidden": 8, "max_iter": 25},
                              saved_result_keys=["test_accuracy", "start"], retry_on_error=1)
    assert hub.run_task("digits", in_process=True) and hub.run_task("digits", in_process=True)
    (task,) = hub.find_tasks(_id=task_id)
    assert task["status"] == "finished" and task["attempts"] == 2 and task["result"]["start"] == 20, task.get("error")
    checkpoints = hub.compare_models(task=task_id, checkpoint_step={"$exists": True}, keys=["checkpoint_step"])
    assert sorted(c["checkpoint_step"] for c in checkpoints) == [9, 19]  # attempt 2 ran epochs 20-24: none
    steps = {a: [r["step"] for r in hub.find_training_logs(task_id=task_id, attempt=a, sort=[("step", 1)])]
             for a in (1, 2)}
    assert steps == {1: list(range(25)), 2: list(range(20, 25))}
    latest = hub.latest_checkpoint(task_id)
    assert latest._checkpoint_step == 19 and latest._attempt == 1 and set(latest) == {"W1", "b1", "W2", "b2"}
    hub.close()
