"""Issue 10 (items 5-10) and issue 11 item 9: the task runner's process hygiene and bounds.

Project standard under test: every process a task starts dies with the task; no task can stop
its runner. Process-tree tests run on ``file://`` (the store does not matter to them); tests
whose outcome depends on the store run on every task backend.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tensorhub import TensorHub
from tensorhub.errors import InvalidArgumentError

from conftest import fresh_uri, pid_alive, wait_until, write_script

WAIT = 30.0  # upper bound of every wait in this file (seconds)


@pytest.fixture
def file_hub(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[TensorHub]:
    with TensorHub(fresh_uri("file", request, tmp_path_factory), project_name="i10") as hub:
        yield hub


_script = write_script


def _read_pids(path: Path, count: int = 3) -> list[int]:
    """The pids the task(s) recorded, once there are at least ``count``."""
    wait_until(lambda: path.exists() and len(path.read_text().split()) >= count, "the task to record its pids")
    return [int(p) for p in path.read_text().split()]


def _kill_leftovers(pids: list[int]) -> None:
    """Clean up after a failing run (processes that the fix should have killed)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _worker(hub: TensorHub, *args: str) -> subprocess.Popen:
    # its own session: a task that signals its process group must not reach pytest (on the old tree it did)
    return subprocess.Popen([sys.executable, "-m", "tensorhub", "worker", hub.uri, "-p", hub.project_name,
                             "--poll", "0.1", *args], stderr=subprocess.PIPE, text=True, start_new_session=True)


#: a task body that starts a child (``sleep``) and a grandchild that left the session (fork + setsid,
#: then a second fork so it is not even the task's child), records their pids in PIDS, then ENDS
SPAWNING = textwrap.dedent("""
    import os, subprocess, sys, time
    child = subprocess.Popen(["sleep", "300"])
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode())
            time.sleep(300)
        os._exit(0)
    daemon = int(os.read(r, 32))
    with open(PIDS, "a") as f:  # appended: a retried task adds the pids of its next attempt
        f.write(f"{child.pid} {daemon} {os.getpid()} ")
    print("spawned", flush=True)
""")

ENDINGS = {
    "returns": "",
    "raises": "raise RuntimeError('task failed')\n",
    "kills_its_parent": "import signal\nos.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(300)\n",
    "signals_its_process_group": "import signal\nos.killpg(0, signal.SIGTERM)\ntime.sleep(300)\n",
    "times_out": "time.sleep(300)\n",
}


# ---------------------------------------------------------------------------- item 5
@pytest.mark.parametrize("ending", ["kills_its_parent", "signals_its_process_group"])
def test_item05_task_that_kills_its_helper_or_group_fails_and_the_worker_carries_on(
        file_hub: TensorHub, tmp_path: Path, ending: str) -> None:
    pids_file = tmp_path / "pids"
    hostile = _script(tmp_path, SPAWNING + ENDINGS[ending], "hostile.py")
    file_hub.create_task("t5", hostile, {"PIDS": str(pids_file)}, priority=1)
    file_hub.create_task("t5", _script(tmp_path, "ok = True\n", "ok.py"), saved_result_keys=["ok"])
    worker = _worker(file_hub, "--task-name", "t5", "--idle-exit", "2")
    pids: list[int] = []
    try:
        _, stderr = worker.communicate(timeout=90)
        pids = _read_pids(pids_file)
        wait_until(lambda: not any(pid_alive(p) for p in pids), f"the task's processes {pids} to die")
    finally:
        worker.kill()
        worker.wait(10)
        _kill_leftovers(pids)
    hostile_task, ok_task = file_hub.find_tasks("t5", sort=[("priority", -1)])
    # the attempt counted and the task failed (not handed back to pending for the next runner to die on)
    assert hostile_task["status"] == "failed", stderr
    assert hostile_task["attempts"] == 1 and len(hostile_task["errors"]) == 1
    # a task that kills its parent kills the helper (the guardian kills what was below it); one that
    # signals its own process group dies of that signal
    expected = {"kills_its_parent": "helper process died", "signals_its_process_group": "SIGTERM"}[ending]
    assert expected in hostile_task["error"]
    assert ok_task["status"] == "finished" and ok_task["result"] == {"ok": True}, stderr  # the runner carried on
    assert worker.returncode == 0, stderr


#: a task that attacks its helper: SIGKILLs the guardian (its grandparent: the helper then shuts down),
#: or SIGSTOPs the helper (its parent) and ends
HELPER_ATTACKS = {
    "kills_the_guardian": "import signal\nguardian = int(open(f'/proc/{os.getppid()}/stat').read().rsplit(')', 1)[1]"
                          ".split()[1])\nos.kill(guardian, signal.SIGKILL)\ntime.sleep(300)\n",
    "stops_its_parent": "import signal\nos.kill(os.getppid(), signal.SIGSTOP)\n",
}


@pytest.mark.parametrize("attack", list(HELPER_ATTACKS))
def test_item05_runner_survives_the_loss_of_its_helper(file_hub: TensorHub, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, attack: str) -> None:
    """A task that takes its helper down (killing the guardian above it, or stopping it: the runner
    gives up on a helper silent for REPLY_SECONDS and kills it): the task's processes die, the
    attempt counts, the runner carries on with a new helper."""
    from tensorhub import zygote

    monkeypatch.setattr(zygote, "REPLY_SECONDS", 3.0)
    pids_file = tmp_path / "pids"
    body = SPAWNING + HELPER_ATTACKS[attack]
    file_hub.create_task("t5b", _script(tmp_path, body), {"PIDS": str(pids_file)}, max_attempts=1)
    pids: list[int] = []
    helper = zygote.shared_zygote()
    try:
        assert file_hub.run_task("t5b") is True
        pids = _read_pids(pids_file, 3)
        (task,) = file_hub.find_tasks("t5b")
        assert task["status"] == "failed" and task["attempts"] == 1
        assert "helper process died or stopped answering" in task["error"]
        assert helper.helper_pid is not None
        wait_until(lambda: not any(pid_alive(p) for p in [*pids, helper.helper_pid, helper.process.pid]),
                   f"the task's processes {pids} and the old helper to die")
        file_hub.create_task("t5b", _script(tmp_path, "ok = True\n", "ok.py"), saved_result_keys=["ok"])
        assert file_hub.run_task("t5b") is True
        assert file_hub.find_tasks("t5b", status="finished")[0]["result"] == {"ok": True}
        assert zygote.shared_zygote() is not helper and zygote.shared_zygote().alive()
    finally:
        _kill_leftovers(pids)


# ---------------------------------------------------------------------------- item 6
@pytest.mark.parametrize("ending", list(ENDINGS))
def test_item06_every_process_a_task_starts_dies_with_the_task(file_hub: TensorHub, tmp_path: Path,
                                                               ending: str) -> None:
    pids_file = tmp_path / "pids"
    file_hub.create_task("t6", _script(tmp_path, SPAWNING + ENDINGS[ending]), {"PIDS": str(pids_file)},
                         timeout=2.0 if ending == "times_out" else None, max_attempts=1)
    pids: list[int] = []
    try:
        assert file_hub.run_task("t6") is True
        pids = _read_pids(pids_file, 3)
        wait_until(lambda: not any(pid_alive(p) for p in pids), f"the task's processes {pids} to die")
        (task,) = file_hub.find_tasks("t6")
        assert task["status"] == ("finished" if ending == "returns" else "failed")
        assert "spawned" in task["stdout_tail"]
    finally:
        _kill_leftovers(pids)


def test_item06_cancel_kills_the_whole_tree(file_hub: TensorHub, tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    file_hub.create_task("t6c", _script(tmp_path, SPAWNING + "time.sleep(300)\n"), {"PIDS": str(pids_file)})
    runner = threading.Thread(target=file_hub.run_task, args=("t6c",), kwargs={"lease": 3.0})
    runner.start()
    pids: list[int] = []
    try:
        pids = _read_pids(pids_file, 3)
        assert file_hub.cancel_tasks(task_name="t6c") == 1
        runner.join(WAIT)
        assert not runner.is_alive()
        wait_until(lambda: not any(pid_alive(p) for p in pids), f"the task's processes {pids} to die")
        assert file_hub.find_tasks("t6c")[0]["status"] == "cancelled"
    finally:
        _kill_leftovers(pids)
        runner.join(WAIT)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_item06_worker_exit_kills_the_whole_tree(file_hub: TensorHub, tmp_path: Path, how: int) -> None:
    pids_file = tmp_path / "pids"
    file_hub.create_task("t6w", _script(tmp_path, SPAWNING + "time.sleep(300)\n"), {"PIDS": str(pids_file)})
    worker = _worker(file_hub, "--task-name", "t6w")
    pids: list[int] = []
    try:
        pids = _read_pids(pids_file, 3)
        worker.send_signal(how)
        worker.communicate(timeout=WAIT)
        wait_until(lambda: not any(pid_alive(p) for p in pids), f"the task's processes {pids} to die")
    finally:
        worker.kill()
        worker.wait(10)
        _kill_leftovers(pids)


# ---------------------------------------------------------------------------- item 7
def test_item07_oversized_result_or_error_fails_the_task_and_the_runner_carries_on(
        task_hub: TensorHub, tmp_path: Path) -> None:
    big_result = _script(tmp_path, "blob = 'x' * (20 << 20)\n", "big_result.py")
    big_error = _script(tmp_path, "raise RuntimeError('y' * (20 << 20))\n", "big_error.py")
    task_hub.create_task("t7", big_result, saved_result_keys=["blob"], priority=2)
    task_hub.create_task("t7", big_error, priority=1)
    task_hub.create_task("t7", _script(tmp_path, "ok = True\n", "ok.py"), saved_result_keys=["ok"])
    for _ in range(3):
        assert task_hub.run_task("t7") is True
    result_task, error_task, ok_task = task_hub.find_tasks("t7", sort=[("priority", -1)])
    assert result_task["status"] == "failed"
    assert "result too large:" in result_task["error"] and "bytes" in result_task["error"]
    assert "result" not in result_task
    assert error_task["status"] == "failed" and error_task["error"].startswith("RuntimeError: yyy")
    assert len(error_task["error"]) < 100_000 and len(error_task["traceback"]) < 200_000
    assert len(error_task["errors"][0]["error"]) < 10_000
    assert ok_task["status"] == "finished"


def test_item07_oversized_result_in_process(file_hub: TensorHub, tmp_path: Path) -> None:
    file_hub.create_task("t7i", _script(tmp_path, "blob = b'x' * (20 << 20)\n"), saved_result_keys=["blob"])
    assert file_hub.run_task("t7i", in_process=True) is True
    (task,) = file_hub.find_tasks("t7i")
    assert task["status"] == "failed" and "result too large:" in task["error"]


# ---------------------------------------------------------------------------- item 8
def test_item08_output_is_not_spooled_to_disk_and_the_tail_is_kept(file_hub: TensorHub, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    file_hub.create_task("t8", _script(tmp_path, """
        import sys
        chunk = b"x" * (1 << 20) + b"\\n"
        for _ in range(100):
            sys.stdout.buffer.write(chunk)
            sys.stderr.buffer.write(chunk)
        print("THE END", flush=True)
        print("ERR END", file=sys.stderr, flush=True)
    """))
    peak = 0
    done = threading.Event()

    def measure() -> None:
        nonlocal peak
        deadline = time.monotonic() + 120
        while not done.is_set() and time.monotonic() < deadline:
            used = 0
            for root, _, files in os.walk(spool):
                for name in files:
                    try:
                        used += os.stat(os.path.join(root, name)).st_blocks * 512
                    except OSError:
                        pass
            peak = max(peak, used)
            time.sleep(0.01)

    sampler = threading.Thread(target=measure)
    sampler.start()
    try:
        assert file_hub.run_task("t8") is True
    finally:
        done.set()
        sampler.join(WAIT)
    (task,) = file_hub.find_tasks("t8")
    assert task["status"] == "finished"
    assert task["stdout_tail"].endswith("THE END\n") and task["stderr_tail"].endswith("ERR END\n")
    assert len(task["stdout_tail"]) <= 4096
    assert peak < (1 << 20), f"{peak} bytes of task output spooled to disk"


# ---------------------------------------------------------------------------- item 9
@pytest.mark.parametrize("option, value", [
    ("max_attempts", True), ("max_attempts", 2.0), ("timeout", float("nan")), ("timeout", float("inf")),
    ("timeout", True), ("priority", True), ("priority", float("nan")),
])
def test_item09_booleans_and_nan_are_not_numbers_in_task_options(file_hub: TensorHub, tmp_path: Path,
                                                                  option: str, value: object) -> None:
    with pytest.raises(InvalidArgumentError, match=option):
        file_hub.create_task("t9", _script(tmp_path, "x = 1\n"), **{option: value})
    with pytest.raises(InvalidArgumentError, match=option):
        file_hub.create_sweep("t9", _script(tmp_path, "x = 1\n"), points=[{}], **{option: value})
    assert file_hub.find_tasks("t9") == []


@pytest.mark.parametrize("call", [
    lambda hub: hub.find_tasks(limit=True),
    lambda hub: hub.find_training_logs(limit=True),
    lambda hub: hub.find_dataset_records(limit=True),
    lambda hub: hub.compare_models(limit=True),
    lambda hub: hub.find_all_models(limit=False),
    lambda hub: hub.run_task("t9", lease=True),
    lambda hub: hub.wait_for_tasks("t9", timeout=True),
    lambda hub: hub.wait_for_tasks("t9", timeout=float("nan")),
    lambda hub: hub.wait_for_tasks("t9", poll=True),
    lambda hub: hub.collect_garbage(older_than=float("nan")),
    lambda hub: hub.collect_garbage(older_than=True),
], ids=["find_tasks-limit", "logs-limit", "datasets-limit", "compare-limit", "models-limit-false", "lease",
        "wait-timeout-bool", "wait-timeout-nan", "wait-poll", "gc-nan", "gc-bool"])
def test_item09_booleans_are_refused_as_limits_and_durations(file_hub: TensorHub, call) -> None:
    file_hub.save_training_log(step=1)
    file_hub.save_training_log(step=2)
    with pytest.raises(InvalidArgumentError):
        call(file_hub)


@pytest.mark.parametrize("options", [
    {"lease": True}, {"lease": float("nan")}, {"poll": True}, {"poll": float("inf")}, {"idle_exit": float("nan")},
    {"idle_exit": True}, {"max_tasks": True}, {"max_tasks": 0},
])
def test_item09_worker_options_refuse_booleans_and_nan(file_hub: TensorHub, options: dict) -> None:
    from tensorhub.worker import WorkerOptions

    with pytest.raises(InvalidArgumentError, match=next(iter(options))):
        WorkerOptions(**options)


def test_item09_worker_cli_refuses_nan_lease(file_hub: TensorHub) -> None:
    done = subprocess.run([sys.executable, "-m", "tensorhub", "worker", file_hub.uri, "--lease", "nan",
                           "--idle-exit", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "lease" in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------------------- item 10
def test_item10_a_transient_renewal_failure_does_not_lose_the_lease(task_hub: TensorHub, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Renewals that fail (conflicts given up on, a store briefly away) or match nothing while the claim
    is still ours are retried soon; the task ends recorded, by its first and only run."""
    from tensorhub import tasks

    task_hub.create_task("t10", _script(tmp_path, """
        import time
        from tensorhub.context import current_attempt
        time.sleep(5.5)
        attempt = current_attempt()
    """), saved_result_keys=["attempt"])
    index = task_hub.index
    real = index.find_one_and_update
    renewals = {"n": 0}

    def flaky(collection, filter, update, sort=None):
        if "claim_id" in filter:  # a renewal: fail the first two, report "no match" for the third
            renewals["n"] += 1
            if renewals["n"] <= 2:
                from tensorhub.errors import BackendUnavailableError
                raise BackendUnavailableError("gave up after conflicting concurrent writes")
            if renewals["n"] == 3:
                return None
        return real(collection, filter, update, sort=sort)

    monkeypatch.setattr(index, "find_one_and_update", flaky)
    monkeypatch.setattr(tasks, "RETRY_MAX_WAIT", 0.1)
    stolen = []

    def thief() -> None:  # another runner, after the first lease (3 s) would have run out unrenewed
        time.sleep(4.0)
        stolen.append(task_hub.task_queue.claim({"task_name": "t10"}, lease=60.0))

    other = threading.Thread(target=thief)
    other.start()
    assert task_hub.run_task("t10", lease=3.0) is True
    other.join(WAIT)
    (task,) = task_hub.find_tasks("t10")
    assert stolen == [None]  # the lease held: nobody could take the task over
    assert renewals["n"] >= 4  # the failures were retried, and renewing went on
    assert task["status"] == "finished" and task["attempts"] == 1 and task["result"] == {"attempt": 1}


def test_item10_a_lost_lease_stops_the_task_copy(file_hub: TensorHub, tmp_path: Path) -> None:
    """When the claim really went to another runner, this runner stops its copy and records nothing."""
    from tensorhub import tasks

    file_hub.create_task("t10l", _script(tmp_path, "import time\ntime.sleep(300)\n"))
    runner = threading.Thread(target=file_hub.run_task, args=("t10l",), kwargs={"lease": 1.5})
    runner.start()
    try:
        wait_until(lambda: file_hub.find_tasks("t10l", status="running"), "the task to start")
        file_hub.index.update_many(tasks.COLLECTION, {"task_name": "t10l"}, {"$set": {"claim_id": "someone-else"}})
        runner.join(WAIT)
        assert not runner.is_alive()
        (task,) = file_hub.find_tasks("t10l")
        assert task["status"] == "running" and task["claim_id"] == "someone-else"  # nothing overwritten
    finally:
        file_hub.cancel_tasks(task_name="t10l")
        runner.join(WAIT)


def test_item10_current_attempt_is_readable_in_process(file_hub: TensorHub, tmp_path: Path) -> None:
    from tensorhub.context import current_attempt

    assert current_attempt() is None
    file_hub.create_task("t10a", _script(tmp_path, "from tensorhub.context import current_attempt\n"
                                                   "attempt = current_attempt()\n"), saved_result_keys=["attempt"])
    file_hub.run_task("t10a", in_process=True)
    assert file_hub.find_tasks("t10a")[0]["result"] == {"attempt": 1}


# ---------------------------------------------------------------------------- issue 11 item 9
@pytest.mark.parametrize("close", ["close", "exit"])
def test_issue11_item09_helper_is_stopped_and_reaped(file_hub: TensorHub, tmp_path: Path, close: str) -> None:
    task_script = _script(tmp_path, "x = 1\n")
    program = _script(tmp_path, f"""
        import gc
        from tensorhub import TensorHub
        hub = TensorHub({file_hub.uri!r}, project_name="i11")
        hub.create_task("t", {str(task_script)!r}, saved_result_keys=["x"])
        assert hub.run_task("t")
        from tensorhub import zygote
        helper = zygote.shared_zygote().helper_pid
        guardian = zygote.shared_zygote().process.pid
        print(helper, guardian, flush=True)
        if {close == "close"!r}:
            hub.close()
            import os
            assert zygote._zygote is None
            for pid in (helper, guardian):
                try:
                    with open(f"/proc/{{pid}}/stat") as f:
                        raise SystemExit("helper or guardian still there: " + f.read())
                except FileNotFoundError:
                    pass
        gc.collect()
    """, "program.py")
    done = subprocess.run([sys.executable, "-W", "error::ResourceWarning", "-X", "dev", str(program)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    assert "ResourceWarning" not in done.stderr, done.stderr
    helper, guardian = map(int, done.stdout.split()[:2])
    wait_until(lambda: not pid_alive(helper) and not pid_alive(guardian), "the helper and its guardian to be gone")


def test_a_spare_task_process_killed_before_use_is_replaced(tmp_path: Path) -> None:
    """The helper forks the next task's process ahead of time; one killed from outside while it
    waits must not cost the next task (the helper forks another, and stays the same helper)."""
    from tensorhub import zygote
    from tensorhub.zygote import _children_map

    script = tmp_path / "ok.py"
    script.write_text("value = 41 + 1\n")
    with TensorHub(f"file://{tmp_path / 'store'}", project_name="p") as hub:
        for _ in range(2):
            hub.create_task("ok", script, saved_result_keys=["value"])
        assert hub.run_task("ok")
        helper = zygote.shared_zygote().helper_pid
        assert helper is not None and helper != zygote.shared_zygote().process.pid
        deadline = time.monotonic() + 10
        while not (spares := _children_map().get(helper, [])) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert spares, "the helper keeps a spare task process forked ahead"
        doomed = [*spares, *(child for pid in spares for child in zygote.descendants(pid))]
        for pid in spares:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10  # dead (or a zombie) before the next start, as "killed while it waited"
        while any(_alive(pid) for pid in doomed) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert hub.run_task("ok")
        assert zygote.shared_zygote().helper_pid == helper  # not a new helper: the spare was replaced
        assert [t["status"] for t in hub.find_tasks("ok")] == ["finished", "finished"]
        assert {t["result"]["value"] for t in hub.find_tasks("ok")} == {42}


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (not a zombie, not gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:].split()[0] != b"Z"


def test_a_task_that_reported_its_end_leaves_no_process_behind(tmp_path: Path) -> None:
    """A task's process reports its end on a pipe (the runner then records without waiting for the
    process and its shepherd to exit): what the task started is killed all the same, and its output
    written before the end is kept."""
    pid_file = tmp_path / "daemon.pid"
    script = tmp_path / "spawn.py"
    script.write_text(textwrap.dedent(f"""
        import subprocess, sys
        daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
        open({str(pid_file)!r}, "w").write(str(daemon.pid))
        print("hello from the task")
    """))
    with TensorHub(f"file://{tmp_path / 'store'}", project_name="p") as hub:
        hub.create_task("spawn", script)
        assert hub.run_task("spawn")
        (task,) = hub.find_tasks("spawn")
        assert task["status"] == "finished" and task["exit_code"] == 0
        assert "hello from the task" in task["stdout_tail"]
    daemon = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(daemon) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(daemon), "a process the task started outlived it"


def test_a_script_that_fakes_the_end_report_is_killed_not_abandoned(tmp_path: Path) -> None:
    """A script that writes an early "done" on every pipe it holds (the report channel among them)
    ends the task then and there: its process is killed, never left running unwatched."""
    pid_file = tmp_path / "task.pid"
    script = tmp_path / "liar.py"
    script.write_text(textwrap.dedent(f"""
        import os, time
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        for fd in map(int, os.listdir("/proc/self/fd")):
            try:
                if fd > 2 and os.readlink(f"/proc/self/fd/{{fd}}").startswith("pipe:"):
                    os.write(fd, (0).to_bytes(4, "little"))
            except OSError:
                pass
        time.sleep(60)
        result = "never"
    """))
    with TensorHub(f"file://{tmp_path / 'store'}", project_name="p") as hub:
        hub.create_task("liar", script, saved_result_keys=["result"])
        assert hub.run_task("liar")
        (task,) = hub.find_tasks("liar")
        assert task["status"] == "failed" and "result" not in (task.get("result") or {})
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the task's process was left running after its runner moved on"


def test_closing_a_runner_whose_helper_was_stopped_leaves_nothing_behind() -> None:
    """``Zygote.close`` on a helper that a task stopped (SIGSTOP: it never sees the runner's EOF):
    the helper is SIGKILLed, its spare task process dies with it, the guardian drains and exits."""
    from tensorhub import zygote
    from tensorhub.zygote import _children_map

    helper = zygote.Zygote()
    try:
        assert helper.exit_code(2 ** 22 + 1) is None  # a round trip: the helper is ready, its pid known
        assert helper.helper_pid is not None
        wait_until(lambda: _children_map().get(helper.helper_pid or 0), "the helper's spare task process")
        spares = _children_map()[helper.helper_pid]
        os.kill(helper.helper_pid, signal.SIGSTOP)
        helper.close()  # waits for the guardian, then kills the helper: bounded (~10 s + the drain)
        assert helper.process.returncode is not None
        wait_until(lambda: not any(pid_alive(p) for p in [helper.helper_pid or 0, *spares]),
                   "the stopped helper and its spare to die")
    finally:
        if helper.helper_pid is not None:
            _kill_leftovers([helper.helper_pid])
        if helper.process.poll() is None:
            helper.process.kill()
            helper.process.wait(10)
