"""Issue 11 items 1, 2, 3: one owner per invariant.

* item 1: ``Records`` is the only way to the index and scopes every read and write to the project
  (a contract test with two projects in one store, over every public method of ``TensorHub``);
* item 2: ``TaskQueue`` owns every task transition, listed in ``tasks.TRANSITIONS``; the illegal
  ones are no-ops; every write of the claim holder carries its ``claim_id``;
* item 3: the hub is a facade: no loops, each kind declares its indexes.
"""

from __future__ import annotations

import ast
import inspect
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bson import ObjectId

from tensorhub import TensorHub, tasks
from tensorhub.errors import InvalidArgumentError, InvalidArgumentTypeError
from tensorhub.records import Records

from conftest import SPLIT_BLOBS, TASK_BACKENDS, fresh_uri

SRC = Path(tasks.__file__).parent
COLLECTIONS = ["datasets", "models", "tasks", "training_logs", "validation_logs", "testing_logs", "log_digests",
               "studies"]


def _script(tmp_path: Path, body: str = "x = 1\n") -> Path:
    path = tmp_path / "task.py"
    path.write_text(body)
    return path


# ---------------------------------------------------------------------------- item 1
#: public methods of TensorHub the two-project test does not call, and why
EXEMPT = {
    "close": "releases connections and files; reads and writes no record",
    "copy_to": "store-wide by design: copies every project (or those named) to another store (test_issue15_copy.py)",
    "collect_garbage": "store-wide by design: deletes blobs no record of any project uses (tests/test_gc.py)",
    "list_projects": "store-wide by design: every project's name and record counts (tests/test_issue12_cli.py)",
}


def _b_calls(b: TensorHub, script: Path) -> dict[str, Callable[[], Any]]:
    """Every public method of TensorHub that touches records, called by project B with queries that
    would match project A's records if they were not scoped (no filter, the same names, A's project)."""
    return {
        "save_dataset": lambda: b.save_dataset([np.full(3, 1)], "d"),
        "append_dataset": lambda: b.append_dataset("d", [np.full(2, 1)]),
        "find_dataset": lambda: b.find_dataset("d"),
        "find_top_dataset": lambda: b.find_top_dataset("d"),
        "find_all_datasets": lambda: b.find_all_datasets(),
        "find_datasets": lambda: b.find_datasets(),
        "find_dataset_records": lambda: b.find_dataset_records() + b.find_dataset_records(project_name="a"),
        "stream_dataset": lambda: list(b.stream_dataset("d", 2, shuffle=False)),
        # oldest first: unscoped, A's "d" (all -1) would be the one opened
        "open_zarr": lambda: [np.asarray(b.open_zarr("d", sort=[("_id", 1)])["0"][...])],
        "upgrade_datasets": lambda: b.upgrade_datasets(),
        "save_model": lambda: b.save_model([np.full(2, 1.0)], "m"),
        "find_model": lambda: b.find_model(model_name="m"),
        "find_top_model": lambda: b.find_top_model(),
        "find_all_models": lambda: b.find_all_models() + b.find_all_models(project_name="a"),
        "compare_models": lambda: b.compare_models(),
        # oldest first: unscoped, A's "m" (all -1) would be the one written
        "export_model": lambda: _exported(b.export_model("m", script.parent / "m.safetensors", sort=[("_id", 1)])),
        "save_training_log": lambda: b.save_training_log(loss=1),
        "save_validation_log": lambda: b.save_validation_log(loss=1),
        "save_testing_log": lambda: b.save_testing_log(loss=1),
        "save_training_logs": lambda: b.save_training_logs([{"loss": 1}]),
        "save_validation_logs": lambda: b.save_validation_logs([{"loss": 1}]),
        "save_testing_logs": lambda: b.save_testing_logs([{"loss": 1}]),
        "find_training_logs": lambda: b.find_training_logs() + b.find_training_logs(project_name="a"),
        "find_validation_logs": lambda: b.find_validation_logs(),
        "find_testing_logs": lambda: b.find_testing_logs(),
        "create_task": lambda: b.create_task("t", script, {"x": 1}),
        "create_sweep": lambda: b.create_sweep("t", script, grid={"x": [1, 2]}),
        # A has a study "s" too: an unscoped read would find it (and call B's a different definition)
        "create_study": lambda: b.create_study("s", script, space={"x": (0.0, 1.0)}, n_trials=2, saved_result_keys=[]),
        "run_study": lambda: b.run_study("s", wait=False),
        # A's pending task has the highest priority: an unscoped claim would take it
        "run_task": lambda: b.run_task(in_process=True),
        "run_top_task": lambda: b.run_top_task(in_process=True),
        "requeue_tasks": lambda: b.requeue_tasks(),
        "cancel_tasks": lambda: b.cancel_tasks(),
        # A's task stays pending: an unscoped wait would time out, an unscoped check say True
        "wait_for_tasks": lambda: b.wait_for_tasks(timeout=30),
        "check_unfinished_task": lambda: b.check_unfinished_task() or b.check_unfinished_task("t"),
        "find_tasks": lambda: b.find_tasks() + b.find_tasks(project_name="a"),
        "delete_datasets": lambda: b.delete_datasets(),
        "delete_model": lambda: b.delete_model(),
        "delete_models": lambda: b.delete_models(),
        "delete_training_log": lambda: b.delete_training_log(),
        "delete_validation_log": lambda: b.delete_validation_log(),
        "delete_testing_log": lambda: b.delete_testing_log(),
        "delete_tasks": lambda: b.delete_tasks(),
        "start_run": lambda: b.start_run("r", lr=1).end(),
        "log": lambda: _log_in_a_run(b),
        "checkpoint": lambda: _checkpoint_in_a_run(b),
        # every run id of the store, A's too: A's run has a checkpoint, which an unscoped read would load
        "latest_checkpoint": lambda: [b.latest_checkpoint(t["_id"]) for t in b.index.find("tasks", {})],
        "find_runs": lambda: b.find_runs() + b.find_runs(project_name="a"),
        "compare_runs": lambda: b.compare_runs(),
        "find_run_records": lambda: b.find_run_records(b.find_tasks()[0]),
        "plot_logs": lambda: _figure_values(b.plot_logs("loss")),
        "plot_runs": lambda: _figure_values(b.plot_runs()),
        "find_records": lambda: b.find_records("models") + b.find_records("tasks", project_name="a"),
        # every record of both projects by id: A's are not found, B's lineage names nothing of A
        "describe_record": lambda: [b.describe_record(c, r["_id"]) for c in ("datasets", "models", "tasks")
                                    for r in b.index.find(c, {})],
    }


def _exported(path: Path) -> list[Any]:
    """The arrays of an exported safetensors file (what :func:`_leaks` reads)."""
    from safetensors.numpy import load_file

    return list(load_file(str(path)).values())


def _figure_values(figure: Any) -> list[Any]:
    """A plotly figure's data as what :func:`_leaks` reads: each trace's numbers as arrays, its text as is."""
    found: list[Any] = []
    for trace in figure.to_plotly_json()["data"]:
        for key in ("x", "y"):
            if trace.get(key) is not None:
                found.append(np.array([v if isinstance(v, (int, float)) else np.nan for v in trace[key]], float))
        for dimension in trace.get("dimensions", []):
            found.append(np.array([v if isinstance(v, (int, float)) else np.nan for v in dimension["values"]], float))
        found.append({"name": trace.get("name")})
    return found


def _log_in_a_run(hub: TensorHub) -> None:
    with hub.start_run("logged"):
        hub.log(loss=1)


def _checkpoint_in_a_run(hub: TensorHub) -> Any:
    with hub.start_run("checkpointed"):
        return hub.checkpoint([np.full(2, 1.0)], step=0)


def _leaks(value: Any, a_ids: set[ObjectId]) -> list[Any]:
    """What in a result belongs to project A: A's ids, records of another project, A's values (-1)."""
    found: list[Any] = []
    if isinstance(value, dict):
        if value.get("_id") in a_ids or value.get("id") in a_ids or value.get("project_name", "b") != "b":
            found.append(value)
        for item in value.values():
            found += _leaks(item, a_ids)
    elif isinstance(value, (list, tuple)):
        for item in value:
            found += _leaks(item, a_ids)
    elif isinstance(value, np.ndarray):
        if value.dtype.kind in "iuf" and (value == -1).any():
            found.append(value)
    elif hasattr(value, "tensorhub_record"):
        found += _leaks(value.tensorhub_record, a_ids) + _leaks(list(value), a_ids)
    return found


def _snapshot(hub: TensorHub) -> dict[str, list[dict]]:
    return {c: hub.index.find(c, {"project_name": "a"}, sort=[("_id", 1)]) for c in COLLECTIONS}


def test_item01_project_b_never_reads_or_changes_project_a(store_uri: str, tmp_path: Path) -> None:
    public = {name for name, _ in inspect.getmembers(TensorHub, inspect.isfunction) if not name.startswith("_")}
    script = _script(tmp_path)
    blobs = SPLIT_BLOBS.get(store_uri)
    with TensorHub(store_uri, project_name="a", blobs=blobs) as a, \
            TensorHub(store_uri, project_name="b", blobs=blobs) as b:
        calls = _b_calls(b, script)
        assert public == set(calls) | set(EXEMPT), "a public method is neither covered nor exempted"
        a.save_dataset([np.full(3, -1)], "d")
        a.save_model([np.full(2, -1.0)], "m")
        for kind in ("training", "validation", "testing"):
            getattr(a, f"save_{kind}_log")(loss=-1)
        a.create_task("t", script, {"x": -1})
        assert a.run_task(in_process=True) is True  # one finished task in A
        a.create_task("t", script, {"x": -1}, priority=10)  # and one that stays pending
        a.create_study("s", script, space={"x": (-1.0, 0.0)}, n_trials=3, saved_result_keys=[])
        with a.start_run("checkpointed") as run:  # a run with a checkpoint (issue 16)
            run.checkpoint([np.full(2, -1.0)], step=5)
        before = _snapshot(a)
        a_ids = {r["_id"] for records in before.values() for r in records}
        a_blobs = {f"chunks/{d}" for c in ("datasets", "models") for r in before[c] for d in r.get("blob_refs", [])}
        assert len(a_ids) == 10 and a_blobs

        for name, call in calls.items():
            result = call()
            assert _leaks(result, a_ids) == [], f"{name} returned project A's records"
            assert _snapshot(a) == before, f"{name} changed project A's records"
        assert all(a.blobs.exists(key) for key in a_blobs)
        assert a.find_dataset("d") is not None and a.check_unfinished_task("t")
        assert [t["status"] for t in a.find_tasks("t", sort=[("priority", -1)])] == ["pending", "finished"]
        assert a.latest_checkpoint(run)._checkpoint_step == 5


def test_item01_records_own_the_index_and_refuse_foreign_writes(hub: TensorHub) -> None:
    records = hub._records
    assert not hasattr(records, "index")  # the raw index is private; hub.index is the users' door
    assert hub.index is records.store_index()
    hub.save_training_log(loss=1)
    with pytest.raises(InvalidArgumentError, match="project_name"):
        records.update_many("training_logs", {}, {"$set": {"project_name": "other"}})
    with pytest.raises(InvalidArgumentError, match="_id"):
        records.find_one_and_update("training_logs", {}, {"$unset": {"_id": ""}})
    foreign = {"_id": ObjectId(), "project_name": "other", "time": None}
    with pytest.raises(InvalidArgumentError, match="project"):
        records.insert_many("training_logs", [foreign])
    assert [r["project_name"] for r in hub.index.find("training_logs", {})] == ["contract"]
    view = records.collection("training_logs")
    assert view.count() == 1 and view.update_many({}, {"$set": {"loss": 2}}) == 1
    assert view.find_one()["loss"] == 2


def test_item01_the_layers_above_records_never_touch_the_raw_index() -> None:
    """Only records.py holds the index (and ownership.py, which runs before there is a project, and
    the backends); the hub's ``index`` property is the one door, through ``Records.store_index``."""
    allowed = {"records.py", "ownership.py", "registry.py"}
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] in ("backends", "testing", "_compat") or rel.name in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("_index", "store_index", "_records"):
                offenders.append(f"{rel}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.Attribute) and node.attr == "index" and isinstance(node.value, ast.Name) \
                    and node.value.id in ("records", "self", "hub", "stores"):
                offenders.append(f"{rel}:{node.lineno} {node.value.id}.index")
    expected_in_hub = {"_records", "store_index"}  # the hub builds Records and exposes hub.index
    hub_uses = {o.split(" .")[-1] for o in offenders if o.startswith("hub.py") and " ." in o}
    others = [o for o in offenders if not o.startswith("hub.py")]
    hub_raw = [o for o in offenders if o.startswith("hub.py") and " ." not in o and "stores.index" not in o]
    assert others == [] and hub_raw == [] and hub_uses <= expected_in_hub


# ---------------------------------------------------------------------------- item 2
@pytest.fixture(params=[*TASK_BACKENDS, "mongomock"])
def queue_hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TensorHub]:
    uri = fresh_uri(request.param, request, tmp_path_factory)
    with TensorHub(uri, project_name="q") as hub:
        yield hub


def test_item02_the_table_lists_every_transition_and_only_the_queue_writes_tasks() -> None:
    events = {event for _, event in tasks.TRANSITIONS}
    assert events == {"create", "claim", "reclaim", "renew", "finish", "fail", "stop", "release", "cancel",
                      "request_cancel", "expire", "expire_cancelled", "retry", "requeue", "start",
                      "prune", "request_prune", "expire_pruned"}  # issue 16: a study's pruned trials
    assert tasks.CLAIM_HOLDER_EVENTS <= events
    assert set(tasks.TRANSITIONS.values()) == {tasks.PENDING, tasks.RUNNING, tasks.FINISHED, tasks.FAILED,
                                         tasks.CANCELLED, tasks.PRUNED}
    assert not hasattr(tasks, "_last_expiry")  # the throttle is the queue's, not a global keyed by id()
    for module in ("hub.py", "runner.py", "worker.py"):  # they call the queue, which writes
        source = (SRC / module).read_text()
        assert "update_many" not in source and "find_one_and_update" not in source


def _one(hub: TensorHub) -> dict:
    (task,) = hub.find_tasks("t")
    return task


def test_item02_every_allowed_transition_works(queue_hub: TensorHub, tmp_path: Path) -> None:
    hub, queue = queue_hub, queue_hub.task_queue
    script = _script(tmp_path)
    hub.create_task("t", script, max_attempts=3)
    assert _one(hub)["status"] == "pending"  # create
    claimed = queue.claim({"task_name": "t"}, lease=60)  # claim
    assert claimed is not None and claimed["status"] == "running" and claimed["attempts"] == 1
    renewed = queue.renew(claimed, 120)  # renew
    assert renewed is not None and renewed["lease_expires_at"] > claimed["lease_expires_at"]
    assert queue.release(claimed) and _one(hub)["status"] == "pending" and _one(hub)["attempts"] == 0  # release
    claimed = queue.claim({"task_name": "t"}, lease=0.05)
    time.sleep(0.1)  # its runner dies: the lease runs out
    again = queue.claim({"task_name": "t"}, lease=60)  # reclaim, with the lease-expired note
    assert again is not None and again["claim_id"] != claimed["claim_id"] and again["attempts"] == 2
    assert [e["attempt"] for e in _one(hub)["errors"]] == [1]
    assert queue.fail(again, {"error": "boom"}, push={"errors": {"attempt": 2, "error": "boom"}})  # fail
    assert _one(hub)["status"] == "failed" and len(_one(hub)["errors"]) == 2
    hub.delete_tasks()

    for status, end in (("finished", queue.finish), ("cancelled", queue.stop)):  # finish, stop
        hub.create_task("t", script)
        claimed = queue.claim({"task_name": "t"})
        assert claimed is not None and end(claimed, {"result": {}}) and _one(hub)["status"] == status
        hub.delete_tasks()

    hub.create_task("t", script)
    assert hub.cancel_tasks() == 1 and _one(hub)["status"] == "cancelled"  # cancel
    hub.delete_tasks()
    hub.create_task("t", script)
    claimed = queue.claim({"task_name": "t"})
    assert claimed is not None and hub.cancel_tasks() == 1  # request_cancel
    assert _one(hub)["status"] == "running" and queue.renew(claimed, 60)["cancel_requested"] is True
    assert queue.release(claimed) and queue.expire() == 1  # expire_cancelled, from pending
    assert _one(hub)["status"] == "cancelled"
    hub.delete_tasks()
    hub.create_task("t", script)
    queue.claim({"task_name": "t"}, lease=0.05)
    hub.cancel_tasks()
    time.sleep(0.1)
    assert queue.expire() == 1 and _one(hub)["status"] == "cancelled"  # expire_cancelled, from running
    hub.delete_tasks()
    hub.create_task("t", script, max_attempts=1)
    queue.claim({"task_name": "t"}, lease=0.05)
    time.sleep(0.1)
    assert queue.expire() == 1 and _one(hub)["status"] == "failed"  # expire: no attempts left
    assert "no attempts are left" in _one(hub)["error"]


def test_item02_illegal_transitions_are_no_ops(queue_hub: TensorHub, tmp_path: Path) -> None:
    hub, queue = queue_hub, queue_hub.task_queue
    script = _script(tmp_path)
    hub.create_task("t", script)
    claimed = queue.claim({"task_name": "t"})
    assert claimed is not None
    stranger = {**claimed, "claim_id": ObjectId()}
    assert queue.renew(stranger, 60) is None  # renew with a wrong claim_id
    assert queue.release(stranger) is False and queue.finish(stranger, {"result": {}}) is False
    assert queue.finish(claimed, {"result": {"x": 1}})
    finished = _one(hub)
    assert queue.finish(claimed, {"result": {"x": 2}}) is False  # finish a finished task
    assert queue.fail(claimed, {"error": "late"}) is False and queue.release(claimed) is False
    assert queue.renew(claimed, 60) is None  # renew a finished task
    assert queue.claim({"task_name": "t"}) is None  # claim a finished one
    assert hub.cancel_tasks() == 0 and queue.expire() == 0  # cancel / expire a finished one
    assert _one(hub) == finished  # nothing changed
    hub.delete_tasks()

    hub.create_task("t", script)
    claimed = queue.claim({"task_name": "t"})
    hub.cancel_tasks()
    assert queue.stop(claimed, {"error": "cancelled while running"})
    cancelled = _one(hub)
    assert queue.finish(claimed, {"result": {}}) is False  # finish a cancelled task
    assert queue.claim({"task_name": "t"}) is None and _one(hub) == cancelled
    with pytest.raises(InvalidArgumentError, match="ends"):
        queue.end(claimed, "pending", {})
    hub.delete_tasks()

    hub.create_task("t", script)  # a stale runner after another took its expired lease over
    stale = queue.claim({"task_name": "t"}, lease=0.05)
    time.sleep(0.1)
    current = queue.claim({"task_name": "t"}, lease=60)
    assert current is not None and queue.fail(stale, {"error": "stale"}) is False
    assert queue.renew(stale, 60) is None and _one(hub)["claim_id"] == current["claim_id"]
    assert _one(hub)["status"] == "running"


def test_item02_every_write_of_the_claim_holder_carries_its_claim_id(queue_hub: TensorHub, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    hub = queue_hub
    hub.create_task("t", _script(tmp_path, "raise ValueError('boom')\n"))
    hub.task_queue.claim({"task_name": "t"}, lease=0.05)  # a runner that dies
    time.sleep(0.1)
    writes: list[dict] = []
    index = hub.index
    for method in ("update_many", "find_one_and_update"):
        real = getattr(index, method)

        def spy(collection: str, filter: dict, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            if collection == "tasks":
                writes.append(filter)
            return _real(collection, filter, *args, **kwargs)

        monkeypatch.setattr(index, method, spy)
    assert hub.run_task("t", in_process=True) is True  # reclaim (with the lease note), renew?, fail
    monkeypatch.undo()
    task = _one(hub)
    assert task["status"] == "failed" and [e["attempt"] for e in task["errors"]] == [1, 2]
    by_id = [f for f in writes if "_id" in f]
    assert len(by_id) >= 2 and all("claim_id" in f and f.get("status") == "running" for f in by_id)


def test_item02_create_task_type_errors_are_type_errors(hub: TensorHub, tmp_path: Path) -> None:
    script = _script(tmp_path)
    for call in (lambda: hub.create_task(3, script),
                 lambda: hub.create_task("t", script, hyper_parameters=[1, 2]),
                 lambda: hub.create_task("t", script, saved_result_keys="acc"),
                 lambda: hub.create_task("t", script, saved_result_keys=[1])):
        with pytest.raises(InvalidArgumentTypeError) as caught:
            call()
        assert isinstance(caught.value, TypeError)
    with pytest.raises(InvalidArgumentError) as wrong_value:
        hub.create_task("", script)
    assert not isinstance(wrong_value.value, TypeError)
    assert hub.find_tasks() == []


def test_item02_the_expiry_throttle_lives_on_the_queue(hub: TensorHub, tmp_path: Path) -> None:
    queue = hub.task_queue
    assert queue._expired_at is None
    assert queue.claim({}) is None
    swept = queue._expired_at
    assert swept is not None and queue.claim({}) is None and queue._expired_at == swept  # throttled
    with TensorHub(hub.uri, project_name="other", blobs=hub.blobs_uri) as other:
        assert other.task_queue is not queue and other.task_queue._expired_at is None


# ---------------------------------------------------------------------------- item 3
def test_item03_the_hub_is_a_facade_without_loops() -> None:
    tree = ast.parse((SRC / "hub.py").read_text())
    (hub_class,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TensorHub"]
    loops = [f"{n.lineno}" for n in ast.walk(hub_class) if isinstance(n, (ast.For, ast.While, ast.AsyncFor))
             and not any(isinstance(f, ast.FunctionDef) and f.name == "_declare_indexes" and
                         f.lineno <= n.lineno <= (f.end_lineno or 0) for f in hub_class.body)]
    assert loops == []  # polling lives in the queue, per-kind work in the kinds' modules
    for kind in ("training", "validation", "testing"):
        for name in (f"save_{kind}_log", f"save_{kind}_logs", f"find_{kind}_logs", f"delete_{kind}_log"):
            method = getattr(TensorHub, name)
            source = ast.parse(inspect.cleandoc("\n" + inspect.getsource(method)))
            (func,) = source.body
            assert isinstance(func, ast.FunctionDef) and len(func.body) == 2  # docstring + one line
            assert kind in (method.__doc__ or "").lower()


def test_item03_each_kind_declares_its_indexes_and_the_hub_declares_them(store_uri: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorhub import datasets, logs, models, study

    declared: list[tuple[str, list]] = []
    monkeypatch.setattr(Records, "create_index", lambda self, c, keys: declared.append((c, list(keys))))
    with TensorHub(store_uri, project_name="p", blobs=SPLIT_BLOBS.get(store_uri)):
        pass
    expected = [(c, list(k)) for kind in (datasets, models, logs, tasks, study)
                for c, ks in kind.INDEXES.items() for k in ks]
    assert declared == expected and {c for c, _ in declared} == set(COLLECTIONS)
    assert all(keys[0] == ("project_name", 1) for _, keys in declared)  # every index serves one project
