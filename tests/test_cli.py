"""The ``tensorhub`` command: ls, worker (including a clean SIGTERM), and the demo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from tensorhub import TensorHub
from tensorhub.cli import main
from tensorhub.demo import run_demo


def _store(tmp_path: Path) -> str:
    return f"file://{tmp_path}/store"


def test_ls_shows_each_kind_as_a_table(tmp_path: Path) -> None:
    uri = _store(tmp_path)
    script = tmp_path / "t.py"
    script.write_text("x = 1\n")
    with TensorHub(uri, project_name="p") as hub:
        hub.save_dataset([np.zeros((4, 3), np.float32)], "mnist", version="1.0")
        hub.save_model([np.ones(2)], "net", test_accuracy=0.75)
        hub.create_task("train", script, {"lr": 0.1})
        hub.save_training_log(step=1, loss=0.5)
    runner = CliRunner()
    out = runner.invoke(main, ["ls", "datasets", "--uri", uri, "-p", "p"])
    assert out.exit_code == 0, out.output
    assert "mnist" in out.output and "<f4(4, 3)" in out.output and "version" in out.output
    out = runner.invoke(main, ["ls", "models", "--uri", uri, "-p", "p"])
    assert "net" in out.output and "0.75" in out.output and "params" in out.output
    out = runner.invoke(main, ["ls", "tasks", "--uri", uri, "-p", "p"])
    assert "train" in out.output and "pending" in out.output
    out = runner.invoke(main, ["ls", "logs", "--uri", uri, "-p", "p", "-q", '{"step": 1}'])
    assert "loss" in out.output and "0.5" in out.output
    out = runner.invoke(main, ["ls", "models", "--uri", uri, "-p", "other"])
    assert "no models" in out.output
    out = runner.invoke(main, ["ls", "logs", "--uri", uri, "-q", "{not json"])
    assert out.exit_code != 0 and "JSON" in out.output


def test_worker_runs_tasks_then_exits_when_idle(tmp_path: Path) -> None:
    uri = _store(tmp_path)
    script = tmp_path / "t.py"
    script.write_text("y = x + 1\n")
    with TensorHub(uri, project_name="p") as hub:
        for x in range(3):
            hub.create_task("w", script, {"x": x}, saved_result_keys=["y"])
        result = CliRunner().invoke(main, ["worker", uri, "--task-name", "w", "-p", "p", "--idle-exit", "0.5",
                                           "--poll", "0.1"])
        assert result.exit_code == 0, result.output
        assert sorted(t["result"]["y"] for t in hub.find_tasks("w")) == [1, 2, 3]


def test_worker_refuses_durations_that_would_busy_loop_or_lose_claims(tmp_path: Path) -> None:
    # a zero/negative --lease expires every claim at once (the task runs twice), a zero --poll hammers
    # the store: both are refused by name before anything runs
    uri = _store(tmp_path)
    script = tmp_path / "t.py"
    script.write_text("pass\n")
    with TensorHub(uri, project_name="p") as hub:
        hub.create_task("b", script)
        for option, value in (("--lease", "0"), ("--lease", "-5"), ("--poll", "0"), ("--idle-exit", "-1"),
                              ("--max-tasks", "0")):
            result = CliRunner().invoke(main, ["worker", uri, "--task-name", "b", "-p", "p", "--idle-exit", "0.2",
                                               option, value])
            assert result.exit_code == 2 and option in result.output, (option, value, result.output)
        assert [t["status"] for t in hub.find_tasks("b")] == ["pending"]


def test_worker_max_tasks(tmp_path: Path) -> None:
    uri = _store(tmp_path)
    script = tmp_path / "t.py"
    script.write_text("pass\n")
    with TensorHub(uri, project_name="p") as hub:
        for _ in range(3):
            hub.create_task("m", script)
        CliRunner().invoke(main, ["worker", uri, "--task-name", "m", "-p", "p", "--max-tasks", "2"])
        assert sorted(t["status"] for t in hub.find_tasks("m")) == ["finished", "finished", "pending"]


def test_sigterm_hands_the_running_task_back(tmp_path: Path) -> None:
    uri = _store(tmp_path)
    script = tmp_path / "slow.py"
    script.write_text("import time\nfor _ in range(600):\n    time.sleep(0.1)\n")
    with TensorHub(uri, project_name="p") as hub:
        hub.create_task("slow", script)
        proc = subprocess.Popen([sys.executable, "-m", "tensorhub", "worker", uri, "--task-name", "slow",
                                 "-p", "p", "--poll", "0.1"], stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while hub.find_tasks("slow")[0]["status"] != "running" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert hub.find_tasks("slow")[0]["status"] == "running"
            os.kill(proc.pid, signal.SIGTERM)
            _, stderr = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == 0, stderr
        (task,) = hub.find_tasks("slow")
        assert task["status"] == "pending" and "owner" not in task and task["attempts"] == 0
        assert "handed back" in stderr


def test_a_stop_that_lands_while_claiming_hands_the_task_back(tmp_path: Path) -> None:
    """The race behind a flaky SIGTERM test: the signal came after the claim was written but before
    the worker marked itself busy, so the task ran to its end instead of being handed back."""
    from tensorhub.worker import Worker, WorkerOptions

    uri = _store(tmp_path)
    script = tmp_path / "slow.py"
    script.write_text("import time\ntime.sleep(60)\n")
    with TensorHub(uri, project_name="p") as hub:
        hub.create_task("slow", script)
        worker = Worker(hub, WorkerOptions(task_name="slow", poll=0.1))
        claim = hub.task_queue.claim

        def claim_then_stop(*args, **kwargs):
            claimed = claim(*args, **kwargs)
            worker.stopping.set()  # what the SIGTERM handler does, landing just after the claim
            return claimed

        hub.task_queue.claim = claim_then_stop  # type: ignore[method-assign]
        assert worker.run() == 0
        (task,) = hub.find_tasks("slow")
        assert task["status"] == "pending" and "owner" not in task and task["attempts"] == 0


def test_a_stop_during_a_child_process_task_kills_it_and_hands_it_back(tmp_path: Path) -> None:
    from tensorhub.runner import StopRequested, run_claimed
    import threading

    uri = _store(tmp_path)
    script = tmp_path / "slow.py"
    script.write_text("import time\ntime.sleep(60)\n")
    with TensorHub(uri, project_name="p") as hub:
        hub.create_task("slow", script)
        claimed = hub.task_queue.claim({"task_name": "slow"})
        stop = threading.Event()
        threading.Timer(0.5, stop.set).start()
        try:
            run_claimed(hub.task_queue, claimed, hub.connection, stop=stop)
        except StopRequested:
            pass
        else:
            raise AssertionError("run_claimed returned although its stop event was set")
        (task,) = hub.find_tasks("slow")
        assert task["status"] == "pending" and task["attempts"] == 0


def test_demo_runs_the_whole_workflow(tmp_path: Path) -> None:
    uri = _store(tmp_path)
    table = run_demo(uri, runners=2, max_iter=30)
    assert table.count("finished") == 3
    assert "best model" in table
    with TensorHub(uri, project_name="demo") as hub:
        tasks = hub.find_tasks("digits")
        assert len(tasks) == 3 and all(t["result"]["test_accuracy"] > 0.5 for t in tasks)
        best = hub.find_model(model_name="digits-mlp", sort=[("test_accuracy", -1)])
        assert best._test_accuracy == max(t["result"]["test_accuracy"] for t in tasks)
        assert len(hub.find_training_logs()) > 0 and len(hub.find_validation_logs()) == 3
