"""A minimal private stand-in for :mod:`tensorhub.plots` (``log_series``, ``run_metrics``), with the same
signatures, used only while that module is not in the tree. TEMPORARY: delete at merge.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tensorhub.hub import TensorHub
from tensorhub.records import as_object_id

_SKIP = frozenset({"_id", "project_name", "time", "task_id", "attempt", "step", "epoch"})
_X_FIELDS = {"step": "step", "epoch": "epoch", "time": "time"}


def downsample(xs: list, ys: list, max_points: int = 2000) -> tuple[list, list]:
    """Min/max per bucket, first and last kept; exact when there are at most ``max_points``."""
    n = len(xs)
    if n <= max_points or max_points < 4:
        return list(xs), list(ys)
    buckets = max_points // 2
    edges = np.linspace(0, n, buckets + 1, dtype=int)
    keep: set[int] = {0, n - 1}
    values = np.asarray(ys, dtype=float)
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi > lo:
            part = values[lo:hi]
            keep.add(lo + int(np.nanargmin(part)) if not np.all(np.isnan(part)) else lo)
            keep.add(lo + int(np.nanargmax(part)) if not np.all(np.isnan(part)) else lo)
    order = sorted(keep)
    return [xs[i] for i in order], [ys[i] for i in order]


def _run_ids(hub: TensorHub, runs: Any, query: dict[str, Any]) -> list[Any]:
    if runs is None:
        return [r["id"] for r in hub.find_runs(**query)]
    return [as_object_id(r.get("_id", r.get("id")) if isinstance(r, dict) else r) for r in runs]


def log_series(hub: TensorHub, metric: str, runs: Any = None, x: str = "step", kind: str = "training",
               max_points: int = 2000, **query: Any) -> list[dict]:
    """One series per (run, attempt) of ``metric``: ``run_id``, ``run_name``, ``attempt``, ``name``,
    ``x``, ``y``, ``n_points`` (before downsampling)."""
    x_field = _X_FIELDS.get(x, "step")
    series = []
    for run_id in _run_ids(hub, runs, query):
        names = hub.find_records("tasks", _id=run_id, limit=1)
        run_name = str(names[0].get("task_name")) if names else str(run_id)
        where: dict[str, Any] = {"task_id": run_id, metric: {"$exists": True}}
        rows = hub.find_records(f"{kind}_logs", [(x_field, 1)], None, **where)
        by_attempt: dict[Any, tuple[list, list]] = {}
        for row in rows:
            value = row.get(metric)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            xs, ys = by_attempt.setdefault(row.get("attempt") or 1, ([], []))
            xv: Any = row.get(x_field)
            xs.append(xv.isoformat() if hasattr(xv, "isoformat") else xv)
            ys.append(value)
        for attempt, (xs, ys) in sorted(by_attempt.items(), key=lambda item: str(item[0])):
            dx, dy = downsample(xs, ys, max_points)
            series.append({"run_id": str(run_id), "run_name": run_name, "attempt": attempt,
                           "name": f"{run_name} #{attempt}", "x": dx, "y": dy, "n_points": len(xs)})
    return series


def run_metrics(hub: TensorHub, run_id: Any) -> dict[str, list[str]]:
    """The metrics ``run_id`` logged, per log kind (from a sample of its rows)."""
    found: dict[str, list[str]] = {}
    for kind in ("training", "validation", "testing"):
        names: dict[str, None] = {}
        for row in hub.find_records(f"{kind}_logs", limit=1000, task_id=as_object_id(run_id)):
            for key, value in row.items():
                if key not in _SKIP and isinstance(value, (int, float)) and not isinstance(value, bool):
                    names.setdefault(key)
        if names:
            found[kind] = list(names)
    return found
