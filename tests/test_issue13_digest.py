"""Issue 13, the dashboard on big runs: per-run log digests kept at write time (tensorhub.log_digest),
read by the charts (plots.log_series / run_metrics), find_runs(metrics=True), compare_runs and
find_run_records instead of every log row, on every backend."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from tensorhub import TensorHub, log_digest, plots
from tensorhub.errors import InvalidArgumentError

SRC = str(Path(log_digest.__file__).resolve().parents[1])


def _task(hub: TensorHub, run_id: ObjectId) -> dict[str, Any]:
    (task,) = hub.task_queue.find({"_id": run_id})
    return task


def _digest(hub: TensorHub, run_id: ObjectId, kind: str = "training") -> tuple[log_digest.Digest, bool]:
    return log_digest.read(hub._records, kind, [_task(hub, run_id)])[run_id]


def _from_rows(hub: TensorHub, run_id: ObjectId, kind: str = "training") -> dict[str, dict[str, Any]]:
    """count/min/max/final per metric, computed here from the rows (final: the newest row's value)."""
    rows = getattr(hub, f"find_{kind}_logs")(task_id=run_id, sort=[("time", 1), ("_id", 1)])
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        for name, value in row.items():
            if name in log_digest.NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if isinstance(value, float) and math.isnan(value):
                continue
            seen = out.setdefault(name, {"final": value, "min": value, "max": value, "count": 0})
            seen.update(final=value, min=min(seen["min"], value), max=max(seen["max"], value),
                        count=seen["count"] + 1)
    return out


def _rows_series(hub: TensorHub, run_id: ObjectId, metric: str, x: str, kind: str = "training") -> list[dict]:
    """log_series as computed from the rows alone (the path runs without a digest take)."""
    rows = getattr(hub, f"find_{kind}_logs")(task_id=run_id, sort=[(x, 1)], **{metric: {"$exists": True}})
    series = plots._series_of(rows, metric, x, plots.DEFAULT_MAX_POINTS, {run_id: _task(hub, run_id)["task_name"]})
    return sorted(series, key=lambda s: s["attempt"] or 0)


def _check_against_rows(hub: TensorHub, run_id: ObjectId, kind: str = "training") -> None:
    digest, stored = _digest(hub, run_id, kind)
    assert stored  # the digest answered, not the rows
    expected = _from_rows(hub, run_id, kind)
    assert digest.summary() == expected
    rows = getattr(hub, f"find_{kind}_logs")(task_id=run_id)
    assert digest.total_rows == len(rows)
    for metric, figures in expected.items():
        (series,) = plots.log_series(hub, metric, runs=[run_id], kind=kind)
        assert series["n_points"] == sum(1 for r in rows if metric in r and r.get("step") is not None)
        assert len(series["x"]) <= plots.DEFAULT_MAX_POINTS
        ys = [y for y in series["y"] if y is not None]
        assert min(ys) == figures["min"] and max(ys) == figures["max"]  # spikes survive
        if metric == "loss":  # one lowest row (no tie): its point is drawn
            lowest = next(r["step"] for r in rows if r.get(metric) == figures["min"])
            assert lowest in series["x"]


# ---------------------------------------------------------------------------- writing keeps the digest
def test_digest_equals_the_rows_for_run_log_and_save_training_logs(hub: TensorHub) -> None:
    with hub.start_run("big") as run:
        for step in range(2600):  # more than RAW_POINTS: the digest buckets
            loss = 1.0 / (step + 1) + (7.5 if step == 1234 else 0.0) - (3.0 if step == 2222 else 0.0)
            run.log(step=step, loss=math.nan if step == 5 else loss, acc=step // 10)
        hub.save_training_logs([{"step": 3000 + i, "epoch": i, "loss": 0.25, "note": "text"} for i in range(20)])
        run.log(kind="validation", step=0, acc=0.5)
        run.log(kind="validation", step=1, acc=0.75)
    _check_against_rows(hub, run.id)
    _check_against_rows(hub, run.id, "validation")
    assert plots.run_metrics(hub, run.id) == {"training": ["acc", "epoch", "loss"], "validation": ["acc"]}
    (found,) = hub.find_runs(_id=run.id)
    assert found["metrics"]["loss"] == _from_rows(hub, run.id)["loss"]
    assert found["metrics"]["validation_acc"] == {"final": 0.75, "min": 0.5, "max": 0.75, "count": 2}
    assert hub.find_run_records(run.id)["training_logs"] == 2620
    (row,) = hub.compare_runs(_id=run.id, keys=["loss"])
    assert row["best_loss"] == _from_rows(hub, run.id)["loss"]["max"]


def test_short_series_are_exact_on_every_axis(hub: TensorHub) -> None:
    with hub.start_run("short") as run:
        for step in range(60):
            run.log(step=step % 40, loss=float(step % 7), acc=step)  # repeated steps: ties sort as the store does
        hub.save_training_logs([{"step": 100 + i, "epoch": i // 2, "loss": i * 0.5} for i in range(10)])
    for x in ("step", "epoch", "time"):
        assert plots.log_series(hub, "loss", runs=[run.id], x=x) == _rows_series(hub, run.id, "loss", x)


def test_the_charts_read_no_log_row_of_a_run_with_a_digest(hub: TensorHub, monkeypatch: pytest.MonkeyPatch) -> None:
    with hub.start_run("r") as run:
        hub.save_training_logs([{"step": i, "loss": 1.0 / (i + 1)} for i in range(300)])
    for kind in ("training", "validation", "testing"):
        monkeypatch.setattr(hub, f"find_{kind}_logs", lambda *a, **k: pytest.fail("a log row was read"))
    monkeypatch.setattr(log_digest, "from_rows", lambda *a, **k: pytest.fail("a log row was read"))
    (series,) = plots.log_series(hub, "loss", runs=[run.id])
    assert series["n_points"] == 300 and plots.run_metrics(hub, run.id) == {"training": ["loss"]}


def test_two_threads_writing_one_run_lose_nothing(hub: TensorHub) -> None:
    with hub.start_run("threads") as run:
        def write(offset: int) -> None:
            for batch in range(8):
                hub.save_training_logs([{"step": offset + batch * 25 + i, "loss": float(offset + batch * 25 + i)}
                                        for i in range(25)])

        threads = [threading.Thread(target=write, args=(offset,)) for offset in (0, 10_000)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    digest, stored = _digest(hub, run.id)
    assert stored and digest.total_rows == 400
    loss = digest.summary()["loss"]
    assert (loss["count"], loss["min"], loss["max"]) == (400, 0.0, 10_199.0)
    assert loss["final"] in (199.0, 10_199.0)  # each thread's last row; which is newer is the race's


WRITER = """
import sys
from tensorhub import TensorHub
hub = TensorHub(sys.argv[1], project_name="contract")
offset = int(sys.argv[2])
for batch in range(5):
    hub.save_training_logs([{"step": offset + batch * 20 + i, "loss": float(offset + batch * 20 + i)} for i in range(20)])
hub.close()
"""


def test_two_processes_writing_one_run_lose_nothing(tmp_path: Path) -> None:
    uri = f"file://{tmp_path / 'store'}"
    with TensorHub(uri, project_name="contract") as hub:
        run = hub.start_run("processes")
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "TENSORHUB_TASK_ID": str(run.id), "TENSORHUB_TASK_ATTEMPT": "1"}
        writers = [subprocess.Popen([sys.executable, "-c", WRITER, uri, str(offset)], env=env)
                   for offset in (0, 1000)]
        assert [w.wait(timeout=120) for w in writers] == [0, 0]
        run.end()
        digest, stored = _digest(hub, run.id)
        assert stored and digest.total_rows == 200
        loss = digest.summary()["loss"]
        assert (loss["count"], loss["min"], loss["max"]) == (200, 0.0, 1099.0)
        assert loss["final"] in (99.0, 1099.0)
        (series,) = plots.log_series(hub, "loss", runs=[run.id])
        assert series["x"] == [*range(100), *range(1000, 1100)]


# ---------------------------------------------------------------------------- deletes and old stores
def test_deleting_logs_then_reading_rebuilds_the_digest(hub: TensorHub) -> None:
    with hub.start_run("r") as run:
        hub.save_training_logs([{"step": i, "loss": float(i)} for i in range(100)])
    assert hub.delete_training_log(task_id=run.id, step={"$gte": 50}) == 50
    assert _digest(hub, run.id)[0].summary()["loss"] == {"final": 49.0, "min": 0.0, "max": 49.0, "count": 50}
    _check_against_rows(hub, run.id)  # the ended run's digest was stored by that read
    (series,) = plots.log_series(hub, "loss", runs=[run.id])
    assert series["x"] == list(range(50))
    assert hub.find_run_records(run.id)["training_logs"] == 50


def test_a_store_written_before_digests_still_answers(hub: TensorHub) -> None:
    with hub.start_run("old") as ended:
        hub.save_training_logs([{"step": i, "loss": 10.0 - i} for i in range(30)])
    live = hub.start_run("live")
    hub.save_training_logs([{"step": i, "loss": float(i)} for i in range(20)])
    hub.index.delete_many(log_digest.COLLECTION, {})  # as an older tensorhub left it: rows, no digest
    log_digest._since_cache.clear()
    try:
        digest, stored = _digest(hub, ended.id)
        assert not stored and digest.summary() == _from_rows(hub, ended.id)  # computed from the rows...
        _check_against_rows(hub, ended.id)  # ...and stored, since the run has ended
        digest, stored = _digest(hub, live.id)
        assert not stored and digest.summary() == _from_rows(hub, live.id)  # still written to: rows each time
        assert plots.log_series(hub, "loss", runs=[live.id]) == _rows_series(hub, live.id, "loss", "step")
        assert hub.find_runs(_id=live.id)[0]["metrics"]["loss"]["max"] == 19.0
        assert hub.find_run_records(live.id)["training_logs"] == 20
    finally:
        live.end()


# ---------------------------------------------------------------------------- the digests are the repository's
def test_users_cannot_write_digests_and_a_hostile_one_is_ignored(hub: TensorHub) -> None:
    with pytest.raises(InvalidArgumentError):
        hub.find_records(log_digest.COLLECTION)
    with hub.start_run("r") as run:
        hub.save_training_logs([{"step": i, "loss": float(i)} for i in range(10)])
    # a part written by hand into the store (hub.index is the raw door): numbers that are not, bytes of no shape
    hub.index.insert_one(log_digest.COLLECTION, {
        "_id": ObjectId(), "project_name": "contract", "run": str(run.id), "kind": "training", "part": "shard",
        "metric": "loss", "series": [{"attempt": 1, "count": 1, "min": {"$where": "sleep(1)"}, "points": b"x"}]})
    digest, _ = _digest(hub, run.id)
    assert digest.summary()["loss"] == {"final": 9.0, "min": 0.0, "max": 9.0, "count": 10}
    (series,) = plots.log_series(hub, "loss", runs=[run.id])
    assert series["y"] == [float(i) for i in range(10)]



def test_the_digest_reads_the_rows_of_each_log_kind_s_collection() -> None:
    from tensorhub import logs

    assert {kind: log_digest.rows_collection(kind) for kind in logs.COLLECTIONS} == logs.COLLECTIONS
    assert log_digest.COLLECTION in logs.INDEXES  # declared by the log kind, with its rows' collections
