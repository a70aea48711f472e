"""Training curves and run comparisons as data and as plotly figures: what ``hub.plot_logs``,
``hub.plot_runs``, ``tensorhub plot`` and the dashboard (``tensorhub ui``) draw.

* :func:`log_series` returns one series of a metric per (run, attempt), each downsampled by
  :func:`downsample` to at most ``max_points`` points. For runs it reads the runs' log digests
  (:mod:`tensorhub.log_digest`: kept when rows are written; every point up to 2,048 rows, then the
  first, last, lowest and highest point of each of at most 512 buckets), so a run with a million rows
  draws a correct-looking curve from a few KB read; a series of at most ``max_points`` rows is exact
  (every row, as before). Where a digest cannot answer exactly (a series longer than the digest keeps
  whole but within ``max_points``, an x value that is not a number) it reads the run's rows of the
  metric, sorted by x in the store, as it does for rows saved outside a run (``runs=None`` without a query).
* :func:`downsample` keeps, per bucket of consecutive points, the lowest and the highest value
  (min/max per bucket), and the first and last point: spikes and plateaus survive, unlike striding.
* :func:`figure_logs` / :func:`figure_runs` build the figures; plotly (the ``ui`` extra) is imported
  only when a figure is made, so reading series needs numpy alone.

No web code here, and only the public :class:`~tensorhub.TensorHub` API is used.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from bson import ObjectId

from tensorhub import log_digest
from tensorhub.errors import InvalidArgumentError, InvalidArgumentTypeError, TensorHubError
from tensorhub.logs import COLLECTIONS
from tensorhub.records import COMMON_INTERNAL_FIELDS
from tensorhub.runs import run_filter
from tensorhub.stamping import RUN_FIELDS

if TYPE_CHECKING:  # plotly is optional (the ``ui`` extra); the hub imports this module lazily
    from plotly.graph_objects import Figure

    from tensorhub.hub import TensorHub

#: the x axes a curve may have: the row's step, a logged ``epoch``, or the time it was logged at
X_FIELDS = ("step", "epoch", "time")
#: points per series after downsampling, by default
DEFAULT_MAX_POINTS = 2000
#: row fields that are never metrics
_NOT_METRICS = COMMON_INTERNAL_FIELDS | RUN_FIELDS | {"step"}


class PlotlyMissingError(TensorHubError):
    """plotly is not installed: figures need the ``ui`` extra."""


def _plotly_go() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise PlotlyMissingError("figures need plotly: pip install 'tensorhub[ui]' (or pip install plotly)") from None
    return go


# ---------------------------------------------------------------------------- downsampling
def downsample(xs: Sequence[Any] | np.ndarray, ys: Sequence[Any] | np.ndarray,
               max_points: int = DEFAULT_MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` of the points ``(xs[i], ys[i])``, in order: the first, the last, and in
    each of ``(max_points - 2) // 2`` buckets of consecutive points its lowest and highest ``y``.

    Exact (every point) when there are ``max_points`` or fewer. ``xs`` are kept as they are (numbers,
    datetimes...): the buckets follow the points' order, which is x order for sorted rows.

    Raises:
        InvalidArgumentError: ``xs`` and ``ys`` differ in length, or ``max_points`` < 2.
    """
    if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)):
        raise InvalidArgumentTypeError(f"max_points must be an int, got {type(max_points).__name__}")
    if max_points < 2:
        raise InvalidArgumentError(f"max_points must be at least 2 (the first and last point), got {max_points}")
    x = np.asarray(xs)
    y = np.asarray(ys, dtype=float)
    if x.shape[0] != y.shape[0] or y.ndim != 1:
        raise InvalidArgumentError(f"xs and ys must be 1-d and of one length, got {x.shape} and {y.shape}")
    n = y.shape[0]
    if n <= max_points:
        return x, y
    keep = _bucket_extremes(y, max_points)
    return x[keep], y[keep]


def _bucket_extremes(y: np.ndarray, max_points: int) -> np.ndarray:
    """Sorted indices: 0, n - 1, and each bucket's argmin and argmax (vectorised: buckets of equal
    size, the last one padded with values that are never chosen)."""
    n = y.shape[0]
    interior = y[1:-1]
    buckets = (max_points - 2) // 2
    if buckets == 0 or interior.size == 0:
        return np.array([0, n - 1])
    size = math.ceil(interior.size / buckets)
    buckets = math.ceil(interior.size / size)
    pad = buckets * size - interior.size
    low = np.concatenate([interior, np.full(pad, np.inf)]).reshape(buckets, size)
    high = np.concatenate([interior, np.full(pad, -np.inf)]).reshape(buckets, size)
    # NaN never wins a bucket unless all of it is NaN (then one NaN point keeps the gap visible)
    arg_low = np.argmin(np.where(np.isnan(low), np.inf, low), axis=1)
    arg_high = np.argmax(np.where(np.isnan(high), -np.inf, high), axis=1)
    starts = np.arange(buckets) * size + 1
    chosen = np.concatenate([[0], starts + arg_low, starts + arg_high, [n - 1]])
    return np.unique(np.minimum(chosen, n - 1))


# ---------------------------------------------------------------------------- reading series
def _check(metric: Any, x: Any, kind: Any) -> None:
    if not isinstance(metric, str) or not metric:
        raise InvalidArgumentTypeError(f"metric must be a metric name (a non-empty str), got {metric!r}")
    if metric in _NOT_METRICS:
        raise InvalidArgumentError(f"{metric!r} is a field tensorhub sets, not a metric; pass a logged metric's name")
    if x not in X_FIELDS:
        raise InvalidArgumentError(f"x must be one of {list(X_FIELDS)}, got {x!r}")
    if kind not in COLLECTIONS:
        raise InvalidArgumentError(f"kind must be one of {sorted(COLLECTIONS)}, got {kind!r}")


def _run_ids(runs: Any) -> list[ObjectId]:
    """Task ids from ``runs``: ids (ObjectId or hex), task/run records (``_id`` or ``id``), Run objects."""
    if isinstance(runs, (str, ObjectId, Mapping)) or hasattr(runs, "id"):
        runs = [runs]
    ids = []
    for run in runs:
        value = run
        if isinstance(run, Mapping):
            value = run.get("_id", run.get("id"))
        elif not isinstance(run, (str, ObjectId)) and hasattr(run, "id"):
            value = run.id
        if isinstance(value, str) and ObjectId.is_valid(value):
            value = ObjectId(value)
        if not isinstance(value, ObjectId):
            raise InvalidArgumentTypeError(
                f"runs are run ids (ObjectId or 24-hex str), run/task records or Run objects, got {run!r}")
        ids.append(value)
    return list(dict.fromkeys(ids))


def _finder(hub: TensorHub, kind: str) -> Any:
    return getattr(hub, f"find_{kind}_logs")


def _plain_x(value: Any) -> Any:
    if isinstance(value, dt.datetime):  # stored UTC; JSON and plotly take ISO text
        return value.isoformat()
    return value


def _series_of(rows: Iterable[Mapping[str, Any]], metric: str, x: str, max_points: int,
               names: Mapping[Any, str]) -> list[dict[str, Any]]:
    """Group ``rows`` (sorted by x) by (task_id, attempt) into downsampled series."""
    groups: dict[tuple[Any, Any], tuple[list[Any], list[float]]] = {}
    for row in rows:
        value, at = row.get(metric), row.get(x)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or at is None:
            continue  # text values, booleans: not drawable
        xs, ys = groups.setdefault((row.get("task_id"), row.get("attempt")), ([], []))
        xs.append(at)
        ys.append(float(value))
    series = []
    for (task_id, attempt), (xs, ys) in groups.items():
        px, py = downsample(np.array(xs, dtype=object), ys, max_points)
        run_name = names.get(task_id, "logs without a run" if task_id is None else str(task_id))
        label = run_name if task_id is None else f"{run_name} {str(task_id)[-6:]}"
        series.append({
            "run_id": None if task_id is None else str(task_id), "run_name": run_name, "attempt": attempt,
            "name": label if attempt is None else f"{label} attempt {attempt}",
            "x": [_plain_x(v) for v in px.tolist()],
            "y": [None if math.isnan(v) else v for v in py.tolist()],
            "n_points": len(ys)})
    return series


def log_series(hub: TensorHub, metric: str, runs: Any = None, x: str = "step", kind: str = "training",
               max_points: int = DEFAULT_MAX_POINTS, **query: Any) -> list[dict[str, Any]]:
    """One downsampled series of ``metric`` per (run, attempt), for charts.

    Args:
        hub: The store and project to read.
        metric: The logged metric's name (e.g. ``"loss"``).
        runs: Run ids, run/task records or Run objects (one or a list). Default ``None``: the runs
            ``query`` selects (task fields, as :meth:`TensorHub.find_runs`), or with no query every
            row of the metric, grouped by run (rows saved outside a run form one more series).
        x: ``"step"`` (default), ``"epoch"`` (a logged field) or ``"time"`` (ISO text).
        kind: ``"training"`` (default), ``"validation"`` or ``"testing"``.
        max_points: At most this many points per series (:func:`downsample`).
        **query: With ``runs=None``, which runs (``run_name=``, ``status=``...).

    Returns:
        ``[{"run_id", "run_name", "attempt", "name", "x", "y", "n_points"}]``, runs in the order
        given (else newest first), attempts ascending; ``n_points`` counts the rows before downsampling.
    """
    _check(metric, x, kind)
    find = _finder(hub, kind)
    # only rows with the metric; rows without the x field are skipped while grouping (a condition
    # fewer for backends that match rows in Python)
    wanted = {metric: {"$exists": True}}
    if runs is None and not query:  # one query for the metric's rows of the whole project
        rows = find(sort=[(x, 1)], **wanted)
        ids = list(dict.fromkeys(r.get("task_id") for r in rows if isinstance(r.get("task_id"), ObjectId)))
        tasks = hub.task_queue.find({"_id": {"$in": ids}}) if ids else []
        series = _series_of(rows, metric, x, max_points, {t["_id"]: str(t.get("task_name")) for t in tasks})
        order = {t["_id"]: i for i, t in enumerate(sorted(tasks, key=lambda t: t["_id"], reverse=True))}
        series.sort(key=lambda s: (order.get(ObjectId(s["run_id"]) if s["run_id"] else None, len(order)),
                                   s["attempt"] if isinstance(s["attempt"], int) else 0))
        return series
    if runs is None:
        # the runs' task records only (find_runs would also read every log row of every run)
        tasks = hub.task_queue.find(run_filter(dict(query)))
    else:
        if query:
            raise InvalidArgumentError("pass runs= or a query selecting runs, not both")
        ids = _run_ids(runs)
        found = {t["_id"]: t for t in hub.task_queue.find({"_id": {"$in": ids}})} if ids else {}
        tasks = [found.get(i, {"_id": i, "task_name": str(i)}) for i in ids]
    names = {t["_id"]: str(t.get("task_name")) for t in tasks}
    # the runs' log digests (log_digest.py: kept at write time), read in one query
    digests = log_digest.read(_records(hub), kind, tasks, metric=metric)
    series = []
    for task in tasks:
        found_series = _digest_series(digests[task["_id"]][0], task, metric, x, max_points, names)
        if found_series is None:  # only the rows answer exactly: one query, the metric's rows sorted by x
            rows = find(sort=[(x, 1)], task_id=task["_id"], **wanted)
            found_series = _series_of(rows, metric, x, max_points, names)
        series += sorted(found_series, key=lambda s: s["attempt"] if isinstance(s["attempt"], int) else 0)
    return series


def _records(hub: TensorHub) -> Any:
    """The project's scoped repository access (:class:`~tensorhub.records.Records`, as the hub's task queue
    holds it), for the runs' log digests: a repository collection no hub method exposes, since its
    documents are the repository's, not records a user saved."""
    return hub.task_queue.records


def _digest_series(digest: log_digest.Digest, task: Mapping[str, Any], metric: str, x: str, max_points: int,
                   names: Mapping[Any, str]) -> list[dict[str, Any]] | None:
    """The run's series of ``metric`` from its digest, as :func:`_series_of` makes them from rows; None
    when the digest cannot answer exactly (see :meth:`log_digest.Series.curve`)."""
    out = []
    task_id = task["_id"]
    for (attempt, name), s in digest.series.items():
        if name != metric or not s.n[x]:
            continue
        curve = s.curve(x, max_points)
        if curve is None:
            return None
        xs, ys = curve
        px, py = downsample(np.array(xs, dtype=object), ys, max_points)
        run_name = names.get(task_id, str(task_id))
        label = f"{run_name} {str(task_id)[-6:]}"
        out.append({
            "run_id": str(task_id), "run_name": run_name, "attempt": attempt,
            "name": label if attempt is None else f"{label} attempt {attempt}",
            "x": [_plain_x(v) for v in px.tolist()],
            "y": [None if math.isnan(v) else v for v in py.tolist()],
            "n_points": s.n[x]})
    return out


def run_metrics(hub: TensorHub, run_id: Any) -> dict[str, list[str]]:
    """The metrics a run logged, per kind: ``{"training": ["acc", "loss"], "validation": [...], ...}``
    (numeric fields of its log rows, sorted; kinds it logged nothing to are left out), from its log digests.

    Args:
        hub: The store and project to read.
        run_id: The run: its id, record or Run object.
    """
    ids = _run_ids(run_id)
    if len(ids) != 1:
        raise InvalidArgumentTypeError(f"run_metrics takes one run (an id, record or Run), got {run_id!r}")
    task_id = ids[0]
    tasks = hub.task_queue.find({"_id": task_id}) or [{"_id": task_id}]  # not a run of this project: its rows
    found: dict[str, list[str]] = {}
    for kind in COLLECTIONS:  # from the run's log digests (log_digest.py), or its rows where it has none
        names = log_digest.read(_records(hub), kind, tasks)[task_id][0].metrics()
        if names:
            found[kind] = names
    return found


# ---------------------------------------------------------------------------- figures
def figure_logs(series: Sequence[Mapping[str, Any]], metric: str, x: str = "step") -> Figure:
    """A line chart of ``series`` (:func:`log_series`' output): one trace per series, named after its
    run and attempt. SVG traces (not WebGL): a few thousand points per series draw fast, and they
    draw in browsers without WebGL (headless ones)."""
    go = _plotly_go()
    figure = go.Figure()
    for s in series:
        figure.add_trace(go.Scatter(x=s["x"], y=s["y"], mode="lines", name=s["name"],
                                    meta={"run_id": s["run_id"], "attempt": s["attempt"]}))
    figure.update_layout(title={"text": metric}, xaxis_title={"text": x}, yaxis_title={"text": metric},
                         legend={"orientation": "h"}, margin={"l": 50, "r": 20, "t": 50, "b": 40},
                         template="plotly_white")
    return figure


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def figure_runs(rows: Sequence[Mapping[str, Any]], params: Sequence[str] | None = None,
                objective: str | None = None) -> Figure:
    """Parameters against a result: parallel coordinates, one line per run, coloured by ``objective``.

    Args:
        rows: :meth:`TensorHub.compare_runs` rows (``params.<name>`` columns and result columns).
        params: The parameters to show (without ``params.``). Default ``None``: every one.
        objective: The result column to colour by and show last. Default ``None``: the first column
            after the parameters that is a number in some row.

    Text parameters become categorical axes (their values as tick labels).
    """
    go = _plotly_go()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    if params is None:
        params = [c[len("params."):] for c in columns if c.startswith("params.")]
    if objective is None:
        fixed = {"run_name", "id", "status", "attempt", "duration_s"}
        objective = next((c for c in columns if not c.startswith("params.") and c not in fixed
                          and any(_number(r.get(c)) is not None for r in rows)), None)
    dimensions = []
    for name in [f"params.{p}" for p in params] + ([objective] if objective else []):
        values = [r.get(name) for r in rows]
        numbers = [_number(v) for v in values]
        if all(n is not None or v is None for n, v in zip(numbers, values)):
            dimensions.append({"label": name.removeprefix("params."), "values": numbers})
        else:  # text (or mixed) values: a categorical axis
            labels = sorted({str(v) for v in values})
            position = {label: i for i, label in enumerate(labels)}
            dimensions.append({"label": name.removeprefix("params."), "values": [position[str(v)] for v in values],
                               "tickvals": list(range(len(labels))), "ticktext": labels})
    line: dict[str, Any] = {}
    if objective:
        # a run without the result (failed, still running) gets NaN: plotly refuses None as a colour
        colors = [_number(r.get(objective)) for r in rows]
        line = {"color": [math.nan if c is None else c for c in colors], "colorscale": "Viridis", "showscale": True,
                "colorbar": {"title": {"text": objective}}}
    figure = go.Figure(go.Parcoords(dimensions=dimensions, line=line))
    figure.update_layout(title={"text": f"parameters against {objective}" if objective else "parameters"},
                         margin={"l": 60, "r": 60, "t": 60, "b": 30})
    return figure
