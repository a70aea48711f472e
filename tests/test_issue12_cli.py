"""Issue 12, item 4 (a complete command line) and, from item 2, the one default-project rule and
``hub.list_projects()``.

Every command is driven through ``click.testing.CliRunner`` against a ``file://`` store in
``tmp_path`` (``ls``/``show``/``rm`` also on mongomock, MongoDB and S3), and ``--version`` through a
real ``python -m tensorhub`` subprocess.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from bson import ObjectId
from click.testing import CliRunner, Result

from tensorhub import TensorHub
from tensorhub.cli import main

from conftest import SPLIT_BLOBS, fresh_uri, write_script

TASK_SCRIPT = """
    import numpy as np
    from tensorhub import TensorHub

    hub = TensorHub()
    hub.save_model([np.ones(2)], "net", acc=0.5)
    hub.save_training_log(step=1, loss=0.25)
    hub.save_validation_log(step=1, acc=0.5)
    y = lr * 2
"""


def _cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def _ok(*args: str, env: dict[str, str] | None = None) -> Result:
    result = _cli(*args, env=env)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result


def _clean_error(result: Result, *words: str) -> None:
    """A one-line ``Error: ...`` naming ``words``, exit code 1, no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    for word in words:
        assert word in line, (word, line)


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return f"file://{tmp_path}/store"


def _fill(uri: str, tmp_path: Path, project: str = "train") -> dict:
    """A project with a dataset, a model trained on it by a task run in-process, logs and a pending task."""
    with TensorHub(uri, project_name=project) as hub:
        dataset_id = hub.save_dataset([np.zeros((4, 3), np.float32)], "mnist", version="1.0")
        task_id = hub.create_task("fit", write_script(tmp_path, TASK_SCRIPT), {"lr": 0.1}, saved_result_keys=["y"])
        assert hub.run_task("fit", in_process=True)
        pending_id = hub.create_task("later", write_script(tmp_path, "pass\n", "p.py"), {"lr": 0.2})
        model_id = hub.save_model([np.ones(3)], "best", test_accuracy=0.75, dataset=dataset_id, task=task_id)
        hub.save_testing_log(acc=0.7)
    return {"dataset": dataset_id, "task": task_id, "pending": pending_id, "model": model_id}


# ------------------------------------------------------------------------------ item 2: projects
def test_item02_list_projects_counts_every_kind_in_every_project(store_uri: str, tmp_path: Path) -> None:
    blobs = SPLIT_BLOBS.get(store_uri)
    script = write_script(tmp_path, "pass\n")
    with TensorHub(store_uri, project_name="a", blobs=blobs) as a, TensorHub(store_uri, project_name="b",
                                                                            blobs=blobs) as b:
        assert a.list_projects() == []
        a.save_dataset([np.arange(3)], "d")
        a.save_model([np.ones(2)], "m")
        a.save_model([np.ones(2)], "m")
        a.save_training_logs([{"step": i} for i in range(5)])
        a.save_validation_log(acc=1)
        for name in ("t1", "t2", "t3"):
            a.create_task(name, script)
        a.cancel_tasks(task_name="t3")
        b.save_testing_log(acc=0.5)
        expected_a = {"project_name": "a", "datasets": 1, "models": 2, "training_logs": 5, "validation_logs": 1,
                      "testing_logs": 0, "tasks": 3, "tasks_by_status": {"pending": 2, "cancelled": 1}}
        expected_b = {"project_name": "b", "datasets": 0, "models": 0, "training_logs": 0, "validation_logs": 0,
                      "testing_logs": 1, "tasks": 0, "tasks_by_status": {}}
        assert a.list_projects() == b.list_projects() == [expected_a, expected_b]


def test_item02_count_by_groups_missing_fields_as_none(store_uri: str) -> None:
    # the primitive list_projects rests on: one grouped count per collection, on every backend
    with TensorHub(store_uri, project_name="p", blobs=SPLIT_BLOBS.get(store_uri)) as hub:
        hub.save_training_logs([{"kind": "x"}, {"kind": "x"}, {"kind": "y"}, {"other": 1}])
        assert hub.index.count_by("training_logs", ["project_name", "kind"]) == {
            ("p", "x"): 2, ("p", "y"): 1, ("p", None): 1}
        assert hub.index.count_by("training_logs", ["kind"], {"kind": "x"}) == {("x",): 2}
        assert hub.index.count_by("nothing_here", ["project_name"]) == {}


def test_item02_the_environment_project_applies_with_a_uri_too(monkeypatch: pytest.MonkeyPatch, uri: str) -> None:
    monkeypatch.setenv("TENSORHUB_PROJECT", "from-env")
    with TensorHub(uri) as hub:
        assert hub.project_name == "from-env"
    with TensorHub(uri, project_name="given") as hub:
        assert hub.project_name == "given"


def test_item02_a_defaulted_project_is_logged_once_with_its_reason(monkeypatch: pytest.MonkeyPatch, uri: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("TENSORHUB_PROJECT", "logged-once")
    with caplog.at_level(logging.INFO, logger="tensorhub"):
        TensorHub(uri).close()
        TensorHub(uri).close()
        TensorHub(uri, project_name="explicit").close()
    said = [r.getMessage() for r in caplog.records if "no project_name given" in r.getMessage()]
    assert len(said) == 1 and "'logged-once'" in said[0] and "$TENSORHUB_PROJECT" in said[0]


def test_item02_a_scripts_default_project_is_logged_and_listed_by_the_cli(tmp_path: Path, uri: str) -> None:
    script = tmp_path / "my_experiment.py"
    script.write_text(f"import logging\nlogging.basicConfig(level=logging.INFO)\nfrom tensorhub import TensorHub\n"
                      f"with TensorHub({uri!r}) as hub:\n    hub.save_training_log(loss=1.0)\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TENSORHUB_PROJECT"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "using project 'my_experiment'" in done.stderr and "file name of the running script" in done.stderr
    out = _ok("ls", "logs", "--uri", uri, env={"TENSORHUB_PROJECT": ""}).output
    assert "no logs in project 'default'" in out
    assert "project 'default' is empty; projects in this store: my_experiment (1 training log)" in out
    assert "--project" in out


# ------------------------------------------------------------------------------ item 4: the command line
def test_item04_version_from_a_real_subprocess() -> None:
    done = subprocess.run([sys.executable, "-m", "tensorhub", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"tensorhub {version('tensorhub')}"


def test_item04_every_command_takes_uri_and_project() -> None:
    for name, command in main.commands.items():
        options = {opt for param in command.params for opt in param.opts}
        if name == "demo":  # it empties its own project first: it never takes a user's
            assert "--uri" in options
            continue
        assert {"--uri", "--project", "-p"} <= options, name
    help_text = _ok("--help").output
    for name in ("ls", "show", "rm", "cancel", "requeue", "worker", "gc", "demo"):
        assert name in help_text
    assert "TENSORHUB_PROJECT" in help_text and "ls projects" in help_text


def test_item04_uri_and_project_come_from_the_environment(uri: str, tmp_path: Path) -> None:
    _fill(uri, tmp_path)
    out = _ok("ls", "datasets", env={"TENSORHUB_URI": uri, "TENSORHUB_PROJECT": "train"}).output
    assert "mnist" in out
    out = _ok("ls", "datasets", "-p", "other", env={"TENSORHUB_URI": uri, "TENSORHUB_PROJECT": "train"}).output
    assert "no datasets in project 'other'" in out


def test_item04_ls_projects_lists_every_project_with_counts(uri: str, tmp_path: Path) -> None:
    _fill(uri, tmp_path)
    with TensorHub(uri, project_name="second") as hub:
        hub.save_training_log(x=1)
    lines = _ok("ls", "projects", "--uri", uri).output.splitlines()
    assert lines[0].split() == ["project_name", "datasets", "models", "training_logs", "validation_logs",
                                "testing_logs", "tasks", "tasks_by_status"]
    assert lines[2].split() == ["second", "0", "0", "1", "0", "0", "0"]
    assert lines[3].split() == ["train", "1", "2", "1", "1", "1", "2", "finished", "1,", "pending", "1"]
    rows = json.loads(_ok("ls", "projects", "--uri", uri, "--json").stdout)
    assert [r["project_name"] for r in rows] == ["second", "train"]
    assert rows[1]["tasks_by_status"] == {"finished": 1, "pending": 1}


def test_item04_ls_tasks_shows_id_status_attempt_host_duration_params_result(uri: str, tmp_path: Path) -> None:
    ids = _fill(uri, tmp_path)
    lines = _ok("ls", "tasks", "--uri", uri, "-p", "train").output.splitlines()
    assert lines[0].split() == ["id", "task_name", "status", "attempt", "host", "duration", "params", "result", "time"]
    finished = next(line for line in lines if str(ids["task"]) in line)
    assert "finished" in finished and socket.gethostname()[:20] in finished
    assert '{"lr": 0.1}' in finished and '{"y": 0.2}' in finished
    pending = next(line for line in lines if str(ids["pending"]) in line)
    assert "pending" in pending and '{"lr": 0.2}' in pending
    out = _ok("ls", "tasks", "--uri", uri, "-p", "train", "-q", '{"status": "pending"}').output
    assert str(ids["pending"]) in out and str(ids["task"]) not in out


def test_item04_ls_json_is_one_array_with_ids_and_times_as_strings(uri: str, tmp_path: Path) -> None:
    ids = _fill(uri, tmp_path)
    for kind, expected in (("datasets", {ids["dataset"]}), ("models", {ids["model"]}),
                           ("tasks", {ids["task"], ids["pending"]}), ("testing-logs", None)):
        result = _ok("ls", kind, "--uri", uri, "-p", "train", "--json")
        rows = json.loads(result.stdout)
        assert isinstance(rows, list) and rows, kind
        assert all(isinstance(r["_id"], str) and isinstance(r["time"], str) and "T" in r["time"] for r in rows)
        if expected is not None:
            assert {r["_id"] for r in rows} >= {str(i) for i in expected}, kind
    (model,) = [r for r in json.loads(_ok("ls", "models", "--uri", uri, "-p", "train", "--json",
                                          "-q", '{"model_name": "best"}').stdout)]
    assert model["dataset_id"] == str(ids["dataset"]) and model["test_accuracy"] == 0.75
    # an empty listing is still one JSON array; the note about other projects goes to stderr
    result = _ok("ls", "models", "--uri", uri, "--json")
    assert json.loads(result.stdout) == [] and "projects in this store: train" in result.output


def test_item04_ls_runs_lists_tasks_and_interactive_runs(uri: str, tmp_path: Path) -> None:
    # needs hub.find_runs and hub.start_run (runs helper)
    ids = _fill(uri, tmp_path)
    with TensorHub(uri, project_name="train") as hub:
        with hub.start_run("by-hand", lr=0.3):
            pass
    lines = _ok("ls", "runs", "--uri", uri, "-p", "train").output.splitlines()
    assert lines[0].split()[:3] == ["id", "task_name", "status"]
    assert any(str(ids["task"]) in line and "finished" in line for line in lines)
    assert any("by-hand" in line and "finished" in line for line in lines)
    rows = json.loads(_ok("ls", "runs", "--uri", uri, "-p", "train", "--json").stdout)
    assert str(ids["task"]) in json.dumps(rows)


def test_item04_show_model_with_its_dataset_and_task(uri: str, tmp_path: Path) -> None:
    ids = _fill(uri, tmp_path)
    out = _ok("show", "model", str(ids["model"]), "--uri", uri, "-p", "train").output
    assert out.splitlines()[0] == f"model {ids['model']}"
    assert "  model_name: best" in out and "  test_accuracy: 0.75" in out
    lineage = out[out.index("lineage:"):]
    assert "mnist" in lineage and "fit" in lineage and "finished" in lineage
    shown = json.loads(_ok("show", "models", str(ids["model"]), "--uri", uri, "-p", "train", "--json").stdout)
    assert shown["record"]["_id"] == str(ids["model"]) and shown["record"]["model_name"] == "best"
    assert shown["lineage"]["dataset"] == {"_id": str(ids["dataset"]), "dataset_name": "mnist",
                                           "time": shown["lineage"]["dataset"]["time"]}
    assert shown["lineage"]["task"]["task_name"] == "fit" and shown["lineage"]["task"]["status"] == "finished"


def test_item04_show_task_and_dataset_with_what_they_made(uri: str, tmp_path: Path) -> None:
    ids = _fill(uri, tmp_path)
    shown = json.loads(_ok("show", "task", str(ids["task"]), "--uri", uri, "-p", "train", "--json").stdout)
    assert shown["record"]["status"] == "finished" and "hub.save_model" in shown["record"]["script"]
    models = shown["lineage"]["models"]
    assert models["count"] == 2 and {m["model_name"] for m in models["records"]} == {"net", "best"}
    text = _ok("show", "tasks", str(ids["task"]), "--uri", uri, "-p", "train").output
    assert "  script: |\n" in text and "    hub.save_model" in text  # a script shows as a block
    dataset = json.loads(_ok("show", "dataset", str(ids["dataset"]), "--uri", uri, "-p", "train", "--json").stdout)
    assert dataset["lineage"]["models"]["count"] == 1
    assert dataset["lineage"]["models"]["records"][0]["_id"] == str(ids["model"])


def test_item04_show_task_counts_the_logs_it_wrote(uri: str, tmp_path: Path) -> None:
    # needs log rows stamped with task_id inside a task (runs helper)
    ids = _fill(uri, tmp_path)
    shown = json.loads(_ok("show", "run", str(ids["task"]), "--uri", uri, "-p", "train", "--json").stdout)
    assert shown["lineage"]["logs"] == {"training_logs": 1, "validation_logs": 1, "testing_logs": 0}
    text = _ok("show", "task", str(ids["task"]), "--uri", uri, "-p", "train").output
    assert '"training_logs": 1' in text


def test_item04_show_of_a_missing_or_malformed_id_is_a_clean_error(uri: str, tmp_path: Path) -> None:
    ids = _fill(uri, tmp_path)
    _clean_error(_cli("show", "model", str(ids["dataset"]), "--uri", uri, "-p", "train"),
                 "no model has the id", str(ids["dataset"]), "'train'")
    _clean_error(_cli("show", "model", "not-an-id", "--uri", uri, "-p", "train"), "not-an-id")
    _clean_error(_cli("show", "widgets", str(ids["model"]), "--uri", uri, "-p", "train"), "widgets", "models")
    result = _cli("show", "model", str(ids["model"]), "--uri", uri)  # the default project is empty: say so
    _clean_error(result, "'default'")
    assert "projects in this store: train" in result.output


def test_item04_a_tensorhub_error_is_one_line_not_a_traceback(uri: str, tmp_path: Path) -> None:
    _fill(uri, tmp_path)
    _clean_error(_cli("ls", "tasks", "--uri", uri, "-p", "train", "-q", '{"$where": "1"}'), "$where")
    _clean_error(_cli("ls", "tasks", "--uri", "nosuchscheme://x"), "nosuchscheme")
    result = _cli("ls", "tasks", "--uri", uri, "-q", "[1, 2]")
    assert result.exit_code == 2 and "JSON object" in result.output


def test_item04_rm_prints_what_it_would_delete_then_deletes_with_yes(uri: str, tmp_path: Path) -> None:
    ids = _fill(uri, tmp_path)
    with TensorHub(uri, project_name="train") as hub:
        hub.save_dataset([np.ones((2, 2))], "other")
        out = _ok("rm", "datasets", '{"dataset_name": "mnist"}', "--uri", uri, "-p", "train").output
        assert "would delete 1 dataset of project 'train'" in out and str(ids["dataset"]) in out
        assert "nothing was deleted" in out and "--yes" in out
        assert len(hub.find_dataset_records()) == 2
        chunks_before = set(hub.blobs.list("chunks/"))
        out = _ok("rm", "datasets", '{"dataset_name": "mnist"}', "--uri", uri, "-p", "train", "--yes").output
        assert "deleted 1 dataset of project 'train'" in out
        assert [r["dataset_name"] for r in hub.find_dataset_records()] == ["other"]
        assert len(set(hub.blobs.list("chunks/"))) == len(chunks_before) - 1  # its blobs went too
        # by id, and logs by query
        out = _ok("rm", "model", str(ids["model"]), "--uri", uri, "-p", "train", "--yes").output
        assert "deleted 1 model" in out and [m["model_name"] for m in hub.find_records("models")] == ["net"]
        out = _ok("rm", "testing-logs", '{"acc": {"$gt": 0.5}}', "--uri", uri, "-p", "train").output
        assert "would delete 1 testing log" in out and len(hub.find_testing_logs()) == 1
        _ok("rm", "testing-logs", '{"acc": {"$gt": 0.5}}', "--uri", uri, "-p", "train", "-y")
        assert hub.find_testing_logs() == []
        out = _ok("rm", "tasks", '{"task_name": "nothing"}', "--uri", uri, "-p", "train", "--yes").output
        assert "deleted 0 tasks" in out and len(hub.find_tasks()) == 2


def test_item04_cancel_by_query_and_by_id(uri: str, tmp_path: Path) -> None:
    script = write_script(tmp_path, "pass\n")
    with TensorHub(uri, project_name="q") as hub:
        first, second, third = (hub.create_task(name, script) for name in ("a", "a", "b"))
        out = _ok("cancel", '{"task_name": "a"}', "--uri", uri, "-p", "q").output
        assert "cancelled 2 task(s) of project 'q'" in out
        out = _ok("cancel", str(third), "--uri", uri, "-p", "q").output
        assert "cancelled 1 task(s)" in out
        assert {t["status"] for t in hub.find_tasks()} == {"cancelled"}
        assert "cancelled 0 task(s)" in _ok("cancel", str(first), "--uri", uri, "-p", "q").output


def test_item04_requeue_puts_failed_and_cancelled_tasks_back(uri: str, tmp_path: Path) -> None:
    # needs hub.requeue_tasks (task lifecycle helper)
    with TensorHub(uri, project_name="q") as hub:
        failing = hub.create_task("f", write_script(tmp_path, "raise ValueError('boom')\n"), max_attempts=1)
        hub.run_task("f", in_process=True)
        cancelled = hub.create_task("c", write_script(tmp_path, "pass\n", "c.py"))
        hub.cancel_tasks(_id=cancelled)
        assert {t["status"] for t in hub.find_tasks()} == {"failed", "cancelled"}
        out = _ok("requeue", str(failing), "--uri", uri, "-p", "q").output
        assert "requeued 1 task(s) of project 'q'" in out
        out = _ok("requeue", '{"status": {"$in": ["failed", "cancelled"]}}', "--uri", uri, "-p", "q").output
        assert "requeued 1 task(s)" in out
        assert {t["status"] for t in hub.find_tasks()} == {"pending"}


def test_item04_read_only_commands_never_create_a_store(tmp_path: Path) -> None:
    # needs TensorHub(..., create=False) (mistakes helper)
    typo = tmp_path / "stroe"
    for args in (["ls", "tasks"], ["ls", "projects"], ["show", "model", str(ObjectId())],
                 ["rm", "models", "{}"], ["cancel", "{}"], ["requeue", "{}"]):
        result = _cli(*args, "--uri", f"file://{typo}")
        _clean_error(result, str(typo))
        assert not typo.exists(), args


def test_item04_worker_takes_the_uri_as_argument_or_option(uri: str, tmp_path: Path) -> None:
    script = write_script(tmp_path, "y = x + 1\n")
    with TensorHub(uri, project_name="w") as hub:
        for x in range(2):
            hub.create_task("w", script, {"x": x}, saved_result_keys=["y"])
        common = ["--task-name", "w", "-p", "w", "--idle-exit", "0.3", "--poll", "0.1", "--in-process"]
        _ok("worker", "--uri", uri, "--max-tasks", "1", *common)
        assert sorted(t["status"] for t in hub.find_tasks("w")) == ["finished", "pending"]
        _ok("worker", uri, "--uri", uri, *common)  # both, the same: fine
        assert [t["status"] for t in hub.find_tasks("w")] == ["finished", "finished"]
    result = _cli("worker", uri, "--uri", f"{uri}-other", *common)
    assert result.exit_code == 2 and "URI given twice" in result.output
    assert not Path(f"{uri}-other".removeprefix("file://")).exists()


def test_item04_gc_takes_uri_and_project(uri: str, tmp_path: Path) -> None:
    _fill(uri, tmp_path)
    out = _ok("gc", "--uri", uri, "-p", "train", "--dry-run", "--older-than", "0").output
    assert out.startswith("would delete 0 chunk(s)")


@pytest.mark.parametrize("backend", ["file", "mongomock", "mongodb", "s3"])
def test_item04_ls_show_rm_on_each_backend(backend: str, request: pytest.FixtureRequest,
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    uri = fresh_uri(backend, request, tmp_path_factory)
    with TensorHub(uri, project_name="b") as hub:
        dataset_id = hub.save_dataset([np.arange(6).reshape(3, 2)], "set")
        model_id = hub.save_model([np.ones(2)], "m", dataset=dataset_id, score=0.5)
        assert "b" in _ok("ls", "projects", "--uri", uri).output
        assert "set" in _ok("ls", "datasets", "--uri", uri, "-p", "b").output
        assert json.loads(_ok("ls", "models", "--uri", uri, "-p", "b", "--json").stdout)[0]["_id"] == str(model_id)
        shown = json.loads(_ok("show", "model", str(model_id), "--uri", uri, "-p", "b", "--json").stdout)
        assert shown["lineage"]["dataset"]["dataset_name"] == "set"
        assert "would delete 1 model" in _ok("rm", "models", "{}", "--uri", uri, "-p", "b").output
        assert len(hub.find_records("models")) == 1
        assert "deleted 1 model" in _ok("rm", "models", str(model_id), "--uri", uri, "-p", "b", "--yes").output
        assert hub.find_records("models") == []
