"""Issue 13: curves and comparisons as data and plotly figures (tensorhub.plots, hub.plot_logs,
hub.plot_runs, ``tensorhub plot``): downsampled series per run and attempt, on every backend."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from click.testing import CliRunner

from tensorhub import TensorHub
from tensorhub.cli import main as cli_main
from tensorhub.errors import InvalidArgumentError
from tensorhub.plots import downsample, log_series, run_metrics

from conftest import write_script

#: a task that logs loss at steps 0..2 and fails on its first attempt, then logs 0..4 and ends
FAILS_ONCE = """
    from tensorhub import TensorHub
    from tensorhub.context import current_attempt
    hub = TensorHub()
    attempt = current_attempt()
    steps = 3 if attempt == 1 else 5
    hub.save_training_logs([{"step": s, "loss": attempt * 10 + s} for s in range(steps)])
    hub.save_validation_log(step=0, acc=0.5 * attempt)
    if attempt == 1:
        raise RuntimeError("first attempt fails")
    done = True
"""


def _two_attempt_task(hub: TensorHub, tmp_path: Path):
    task_id = hub.create_task("t", write_script(tmp_path, FAILS_ONCE), retry_on_error=1)
    assert hub.run_task("t", in_process=True)
    assert hub.run_task("t", in_process=True)
    (task,) = hub.find_tasks("t")
    assert task["status"] == "finished" and task["attempts"] == 2, task.get("error")
    return task_id


# ---------------------------------------------------------------------------- downsample
def test_item_downsample_keeps_extremes_first_and_last() -> None:
    rng = np.random.default_rng(0)
    ys = np.cumsum(rng.normal(size=100_000))
    ys[31_337] = 1e6   # a spike
    ys[77_777] = -1e6  # a dip
    xs = np.arange(ys.size)
    px, py = downsample(xs, ys, max_points=500)
    assert 4 < len(px) <= 500 and len(px) == len(py)
    assert px[0] == 0 and px[-1] == ys.size - 1
    assert 31_337 in px and 77_777 in px
    assert np.all(np.diff(px) > 0), "points stay in x order"
    assert np.array_equal(py, ys[px]), "every kept point is a real point"
    # every bucket's min and max survive: the envelope of the curve is intact
    edges = np.linspace(1, ys.size - 1, 11).astype(int)
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = py[(px >= lo) & (px < hi)]
        assert inside.max() >= np.percentile(ys[lo:hi], 99) and inside.min() <= np.percentile(ys[lo:hi], 1)


def test_item_downsample_is_exact_when_small_and_refuses_bad_max_points() -> None:
    px, py = downsample([1, 2, 3], [3.0, 1.0, 2.0], max_points=3)
    assert px.tolist() == [1, 2, 3] and py.tolist() == [3.0, 1.0, 2.0]
    assert downsample(list(range(10)), list(range(10)), max_points=2)[0].tolist() == [0, 9]
    gap = np.arange(10_000.0)
    gap[3_000:6_000] = np.nan  # a stretch of NaN: kept as a gap, never chosen over a real value elsewhere
    gx, gy = downsample(np.arange(gap.size), gap, max_points=100)
    assert 0 < np.isnan(gy).sum() and np.nanmax(gy) == 9_999.0 and np.nanmin(gy) == 0.0
    with pytest.raises(InvalidArgumentError, match="max_points"):
        downsample([1, 2], [1, 2], max_points=1)
    with pytest.raises(InvalidArgumentError, match="length"):
        downsample([1, 2], [1.0], max_points=10)


# ---------------------------------------------------------------------------- series
def test_item_log_series_has_one_series_per_attempt(hub: TensorHub, tmp_path: Path) -> None:
    task_id = _two_attempt_task(hub, tmp_path)
    series = log_series(hub, "loss", runs=[task_id])
    assert [(s["run_id"], s["run_name"], s["attempt"]) for s in series] == [(str(task_id), "t", 1), (str(task_id), "t", 2)]
    assert series[0]["x"] == [0, 1, 2] and series[0]["y"] == [10, 11, 12] and series[0]["n_points"] == 3
    assert series[1]["x"] == [0, 1, 2, 3, 4] and series[1]["y"] == [20, 21, 22, 23, 24]
    assert series[0]["name"] != series[1]["name"]
    # the same from a query over runs, from no query at all, and for the validation logs
    assert log_series(hub, "loss", run_name="t") == series
    assert log_series(hub, "loss") == series
    validation = log_series(hub, "acc", runs=str(task_id), kind="validation")
    assert [(s["attempt"], s["y"]) for s in validation] == [(1, [0.5]), (2, [1.0])]
    assert run_metrics(hub, task_id) == {"training": ["loss"], "validation": ["acc"]}


def test_item_log_series_downsamples_per_run_and_x_time(hub: TensorHub) -> None:
    with hub.start_run("a", lr=0.1) as run_a:
        for step in range(300):
            run_a.log(step=step, loss=float(step % 7), acc=step / 300)
    with hub.start_run("b", lr=0.2) as run_b:
        run_b.log(step=0, loss=5.0)
    series = log_series(hub, "loss", runs=[run_a.id, run_b.id], max_points=50)
    assert [(s["run_name"], s["n_points"]) for s in series] == [("a", 300), ("b", 1)]
    assert len(series[0]["x"]) <= 50 and series[0]["x"][0] == 0 and series[0]["x"][-1] == 299
    assert min(series[0]["y"]) == 0.0 and max(series[0]["y"]) == 6.0
    timed = log_series(hub, "loss", runs=run_b, x="time")
    assert isinstance(timed[0]["x"][0], str) and timed[0]["x"][0][:4].isdigit()  # ISO text
    with pytest.raises(InvalidArgumentError, match="x must be"):
        log_series(hub, "loss", x="wall")
    with pytest.raises(InvalidArgumentError, match="kind must be"):
        log_series(hub, "loss", kind="train")


# ---------------------------------------------------------------------------- figures
def test_item_plot_logs_and_plot_runs_return_plotly_figures(hub: TensorHub, tmp_path: Path) -> None:
    task_id = _two_attempt_task(hub, tmp_path)
    for lr in (0.1, 0.01):
        with hub.start_run("mlp", lr=lr, opt="sgd" if lr > 0.05 else "adam") as run:
            run.log(step=0, loss=lr)
            run.end(result={"score": lr * 10})
    figure = hub.plot_logs("loss")
    assert isinstance(figure, go.Figure) and len(figure.data) == 4  # t's two attempts, two mlp runs
    assert len(hub.plot_logs("loss", runs=[task_id]).data) == 2
    assert len(hub.plot_logs("loss", run_name="mlp").data) == 2
    assert len(hub.plot_logs("nothing").data) == 0
    runs = hub.plot_runs("score", run_name="mlp")
    assert isinstance(runs, go.Figure) and len(runs.data) == 1
    labels = [d["label"] for d in runs.data[0].dimensions]
    assert labels == ["lr", "opt", "score"]
    assert sorted(runs.data[0].dimensions[0]["values"]) == [0.01, 0.1]


def test_item_cli_plot_writes_a_standalone_page(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/store"
    hub = TensorHub(uri, project_name="p")
    with hub.start_run("<script>alert(1)</script>") as run:
        for step in range(10):
            run.log(step=step, loss=1.0 / (step + 1))
    hub.close()
    out = tmp_path / "loss.html"
    result = CliRunner().invoke(cli_main, ["plot", "loss", "--uri", uri, "-p", "p", "--run", str(run.id),
                                           "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "<html>" in page[:100] and "plotly.js v" in page and len(page) > 1_000_000  # plotly.js inlined
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", page, re.I), "loads nothing from the network"
    assert "<script>alert(1)" not in page, "a stored name is data (JSON-escaped), not markup"
    assert "1 line(s)" in result.output
    bad = CliRunner().invoke(cli_main, ["plot", "loss", "--uri", uri, "-p", "p", "--run", str(run.id),
                                        "-q", "{}", "-o", str(out)])
    assert bad.exit_code == 2 and "not both" in bad.output


def test_item_plot_runs_draws_runs_that_lack_the_objective(hub: TensorHub) -> None:
    """A failed or unfinished run has no result: it is drawn uncoloured, not an error from plotly."""
    with hub.start_run("good", lr=0.1) as run:
        run.log(step=0, loss=0.5)
    with pytest.raises(RuntimeError), hub.start_run("broken", lr=0.2):
        raise RuntimeError("no loss logged")
    figure = hub.plot_runs(objective="loss")
    (trace,) = figure.data
    colors = list(trace.line.color)
    assert len(colors) == 2 and 0.5 in colors and any(np.isnan(c) for c in colors)
