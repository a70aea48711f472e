"""Tasks at production grade: isolation, crashes, timeouts, cancellation, leases and dead runners.

Runs on every backend whose store another process can open (``TASK_BACKENDS``), with real
runner processes (``python -m tensorhub worker``) where a runner has to die or be signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tensorhub import TensorHub
from tensorhub.errors import InvalidArgumentError, TaskTimeoutError

from conftest import pid_alive, wait_until, write_script


_script = write_script


def _worker(hub: TensorHub, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tensorhub", "worker", hub.uri, "-p", hub.project_name,
                             "--poll", "0.1", *args], stderr=subprocess.PIPE, text=True)


def test_script_exception_marks_failed_and_runner_carries_on(task_hub: TensorHub, tmp_path: Path) -> None:
    bad = _script(tmp_path, """
        print("about to fail")
        raise RuntimeError("boom " + str(lr))
    """, "bad.py")
    good = _script(tmp_path, "answer = 42\n", "good.py")
    task_hub.create_task("t", bad, {"lr": 0.5}, priority=1)
    task_hub.create_task("t", good, saved_result_keys=["answer"])
    assert task_hub.run_task("t") and task_hub.run_task("t")
    failed, finished = task_hub.find_tasks("t", sort=[("priority", -1)])
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: boom 0.5"
    assert "raise RuntimeError" in failed["traceback"] and failed["exit_code"] == 1
    assert "about to fail" in failed["stdout_tail"] and "RuntimeError" in failed["stderr_tail"]
    assert failed["errors"][0]["error"] == "RuntimeError: boom 0.5"
    assert finished["status"] == "finished" and finished["result"] == {"answer": 42}


@pytest.mark.parametrize("body, expected", [
    ("import os\nos._exit(3)\n", "exited with code 3"),
    ("import ctypes\nctypes.string_at(0)\n", "SIGSEGV"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", "SIGKILL (out of memory"),
])
def test_crashing_scripts_fail_with_diagnostics(task_hub: TensorHub, tmp_path: Path, body: str,
                                                expected: str) -> None:
    task_hub.create_task("crash", _script(tmp_path, "print('started')\n" + body))
    assert task_hub.run_task("crash") is True
    (task,) = task_hub.find_tasks("crash")
    assert task["status"] == "failed" and expected in task["error"]
    assert task["stdout_tail"].startswith("started")
    task_hub.create_task("crash", _script(tmp_path, "ok = True\n", "ok.py"), saved_result_keys=["ok"])
    assert task_hub.run_task("crash") is True  # the runner survived the crash
    assert task_hub.find_tasks("crash", status="finished")[0]["result"] == {"ok": True}


def test_out_of_memory_kill_is_reported(task_hub: TensorHub, tmp_path: Path) -> None:
    script = _script(tmp_path, """
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        hog = bytearray(2 << 30)
    """)
    task_hub.create_task("oom", script)
    task_hub.run_task("oom")
    (task,) = task_hub.find_tasks("oom")
    assert task["status"] == "failed" and "MemoryError" in task["error"]


def test_timeout_kills_a_hanging_task(task_hub: TensorHub, tmp_path: Path) -> None:
    task_hub.create_task("hang", _script(tmp_path, "import time\nprint('sleeping', flush=True)\ntime.sleep(600)\n"),
                         timeout=1.0)
    start = time.monotonic()
    assert task_hub.run_task("hang") is True
    assert time.monotonic() - start < 30
    (task,) = task_hub.find_tasks("hang")
    assert task["status"] == "failed" and "timeout of 1.0s" in task["error"]
    assert "sleeping" in task["stdout_tail"]


def test_cancel_stops_a_running_task(task_hub: TensorHub, tmp_path: Path) -> None:
    script = _script(tmp_path, "import time\nfor _ in range(6000):\n    time.sleep(0.01)\n")
    task_hub.create_task("cancel", script)
    task_hub.create_task("cancel", script)
    runner = threading.Thread(target=task_hub.run_task, args=("cancel",), kwargs={"lease": 3.0})
    runner.start()
    wait_until(lambda: task_hub.find_tasks("cancel", status="running"), what="a running task")
    assert task_hub.cancel_tasks(task_name="cancel") == 2  # one running, one pending
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert [t["status"] for t in task_hub.find_tasks("cancel")] == ["cancelled", "cancelled"]
    assert task_hub.run_task("cancel") is False


def test_in_process_running_is_available(task_hub: TensorHub, tmp_path: Path) -> None:
    task_hub.create_task("inproc", _script(tmp_path, "import os\npid = os.getpid()\n"), saved_result_keys=["pid"])
    task_hub.create_task("inproc", _script(tmp_path, "import os\npid = os.getpid()\n"), saved_result_keys=["pid"])
    task_hub.run_task("inproc", in_process=True)
    task_hub.run_task("inproc")
    pids = [t["result"]["pid"] for t in task_hub.find_tasks("inproc", sort=[("finished_at", 1)])]
    assert pids[0] == os.getpid() and pids[1] != os.getpid()


def test_sweep_creates_one_task_per_point_and_priority_orders_claims(task_hub: TensorHub, tmp_path: Path) -> None:
    script = _script(tmp_path, "score = lr * units\n")
    ids = task_hub.create_sweep("sweep", script, grid={"lr": [0.1, 0.2], "units": [10, 20]},
                                points=[{"lr": 1.0, "units": 1}], saved_result_keys=["score"])
    assert len(ids) == 5
    points = sorted((t["hyper_parameters"]["lr"], t["hyper_parameters"]["units"]) for t in task_hub.find_tasks("sweep"))
    assert points == [(0.1, 10), (0.1, 20), (0.2, 10), (0.2, 20), (1.0, 1)]
    urgent = task_hub.create_task("sweep", script, {"lr": 9.0, "units": 9}, saved_result_keys=["score"], priority=5)
    task_hub.run_task("sweep")
    assert task_hub.find_tasks("sweep", status="finished")[0]["_id"] == urgent
    task_hub.run_task("sweep")  # then the oldest of the rest
    assert {t["_id"] for t in task_hub.find_tasks("sweep", status="finished")} == {urgent, ids[0]}
    with pytest.raises(InvalidArgumentError):
        task_hub.create_sweep("sweep", script)


def test_wait_for_tasks_times_out_then_returns(task_hub: TensorHub, tmp_path: Path) -> None:
    task_hub.create_task("w", _script(tmp_path, "x = 1\n"), saved_result_keys=["x"])
    with pytest.raises(TaskTimeoutError):
        task_hub.wait_for_tasks("w", timeout=0.3, poll=0.05)
    task_hub.run_task("w")
    (task,) = task_hub.wait_for_tasks("w", timeout=5)
    assert task["status"] == "finished"


@pytest.mark.slow
def test_a_killed_runner_loses_its_task_to_another_after_the_lease(task_hub: TensorHub, tmp_path: Path) -> None:
    script = _script(tmp_path, """
        import os, time
        from tensorhub import TensorHub
        TensorHub().save_training_log(child_pid=os.getpid())
        time.sleep(1.5)
        done = True
    """)
    task_hub.create_task("lease", script, saved_result_keys=["done"])
    first = _worker(task_hub, "--task-name", "lease", "--lease", "2")
    try:
        wait_until(lambda: task_hub.find_training_logs(), what="the task to start")
        child_pid = task_hub.find_training_logs()[0]["child_pid"]
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        wait_until(lambda: not pid_alive(child_pid), timeout=10, what="the orphaned task process to die")
    finally:
        first.kill()
    (task,) = task_hub.find_tasks("lease")
    assert task["status"] == "running" and task["attempts"] == 1  # nobody finished it
    second = _worker(task_hub, "--task-name", "lease", "--lease", "2", "--idle-exit", "6")
    try:
        _, stderr = second.communicate(timeout=90)
    finally:
        second.kill()
    (task,) = task_hub.find_tasks("lease")
    assert task["status"] == "finished", stderr
    assert task["attempts"] == 2 and task["result"] == {"done": True}
    assert task["owner"]["pid"] == second.pid
    assert task["errors"][0]["attempt"] == 1 and "lease expired" in task["errors"][0]["error"]


@pytest.mark.slow
def test_max_attempts_ends_in_failed_for_good(task_hub: TensorHub, tmp_path: Path) -> None:
    script = _script(tmp_path, "import time\ntime.sleep(600)\n")
    task_hub.create_task("once", script, max_attempts=1)
    runner = _worker(task_hub, "--task-name", "once", "--lease", "1")
    try:
        wait_until(lambda: task_hub.find_tasks("once", status="running"), what="the task to start")
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
    finally:
        runner.kill()
    time.sleep(1.2)  # let the lease run out
    assert task_hub.task_queue.expire({"task_name": "once"}) == 1
    (task,) = task_hub.find_tasks("once")
    assert task["status"] == "failed" and "no attempts are left" in task["error"]
    assert task_hub.run_task("once") is False and not task_hub.check_unfinished_task("once")


def test_sigterm_hands_the_task_back_and_kills_its_process(task_hub: TensorHub, tmp_path: Path) -> None:
    script = _script(tmp_path, """
        import os, time
        from tensorhub import TensorHub
        TensorHub().save_training_log(child_pid=os.getpid())
        time.sleep(600)
    """)
    task_hub.create_task("term", script)
    runner = _worker(task_hub, "--task-name", "term")
    try:
        wait_until(lambda: task_hub.find_training_logs(), what="the task to start")
        child_pid = task_hub.find_training_logs()[0]["child_pid"]
        runner.send_signal(signal.SIGTERM)
        _, stderr = runner.communicate(timeout=30)
    finally:
        runner.kill()
    assert runner.returncode == 0, stderr
    (task,) = task_hub.find_tasks("term")
    assert task["status"] == "pending" and task["attempts"] == 0 and "handed back" in stderr
    wait_until(lambda: not pid_alive(child_pid), timeout=10, what="the task process to die")
