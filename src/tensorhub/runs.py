"""Runs: what produced records. A run is a task attempt or an interactive run, and both are task records.

* ``hub.start_run(run_name, **params)`` makes an *interactive* run (a notebook, a script run by
  hand): a task record with ``run_type: "interactive"``, ``running`` and claimed by this process
  from the start (``TaskQueue.start``: owner, ``claim_id``, lease, ``attempts`` 1 and no attempt
  left, so no runner ever takes it). A :class:`~tensorhub.tasks.Heartbeat` renews its lease while
  it lives; it ends ``finished`` (its result: the last value of each metric it logged, updated
  with ``end(result=...)``), ``failed`` with error and traceback when its ``with`` block raised,
  or ``cancelled`` if ``cancel_tasks`` asked it to stop. If its process dies, the queue's expiry
  sweep (:meth:`~tensorhub.tasks.TaskQueue.expire`: run by claims, and by :func:`find_runs`) ends it
  ``failed`` once the lease runs out, as it does for a runner's task.
* While a run is current, what is saved (logs, models, datasets) carries its ``task_id`` and
  ``attempt`` (:mod:`tensorhub.stamping`); :func:`find_run_records` lists it.
* :func:`find_runs` and :func:`compare_runs` list tasks and interactive runs alike, with their
  parameters, outcome and final/best metrics from their result and their logs.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from bson import ObjectId

from tensorhub import datasets as _datasets
from tensorhub import log_digest
from tensorhub import logs as _logs
from tensorhub.errors import InvalidArgumentError, InvalidArgumentTypeError
from tensorhub.models import _repository as _models
from tensorhub.records import Records, as_object_id
from tensorhub.run_log import RunLogger, metric_key, scalar
from tensorhub.stamping import pop_interactive, push_interactive
from tensorhub.task_script import bounded_failure, check_result_size, describe
from tensorhub.tasks import (
    CANCELLED,
    DEFAULT_LEASE,
    FAILED,
    FINISHED,
    INTERACTIVE_RUN,
    TASK_RUN,
    Heartbeat,
    TaskQueue,
)
from tensorhub.tasks import COLLECTION as TASKS

log = logging.getLogger(__name__)

#: ``task_name`` of an interactive run started without ``run_name``
DEFAULT_RUN_NAME = "interactive"
#: the columns every row of :func:`find_runs` has, in order
RUN_COLUMNS = ["id", "run_name", "run_type", "status", "attempt", "host", "pid", "started_at", "finished_at",
               "duration_s", "params", "result", "error", "metrics"]


class Run(RunLogger):
    """An interactive run, as :meth:`TensorHub.start_run <tensorhub.TensorHub.start_run>` returns it.

    A task record (``run_type="interactive"``) owned by this process while it is open (see the
    module docstring). Use it as a context manager (the block's exception ends it ``failed``),
    or call :meth:`end`; a run left open ends at interpreter exit.

    Attributes:
        id: The run's task record ``_id`` (``find_training_logs(task_id=run.id)``).
        attempt: Always 1 for an interactive run.
        name: The run's name (its ``task_name``).
        final: The last value of each metric logged so far (validation and testing ones as
            ``validation_<name>``/``testing_<name>``): the result it ends with.
        ended: Whether the run has ended (``log`` then raises ``NoActiveRunError``).
        pending: Rows logged and not yet written.
        cancel_requested: Whether ``cancel_tasks`` asked it to stop.

    Example::

        with hub.start_run("mlp", lr=0.1) as run:
            run.log(step=0, loss=1.0)
            run.log(kind="validation", acc=0.9)
            run.end(result={"test_accuracy": 0.97})   # optional: the block's end ends it too
    """

    def __init__(self, records: Records, queue: TaskQueue, claimed: dict, lease: float) -> None:
        super().__init__(records, claimed["_id"], 1)
        self._queue, self._claimed = queue, claimed
        self._heartbeat = Heartbeat(queue, claimed, lease)
        self._heartbeat.start()
        self._stamp = push_interactive(records.store_key, claimed["_id"], 1)  # what hub.log finds
        self._extra_params: dict[str, Any] = {}  # log_params': written with the outcome (the claim holder's write)

    @property
    def name(self) -> str:
        """The run's name (its task record's ``task_name``)."""
        return str(self._claimed["task_name"])

    @property
    def cancel_requested(self) -> bool:
        """Whether ``cancel_tasks`` asked this run to stop (its heartbeat reads the record about every
        second); the run then ends ``cancelled``. A loop may check it to stop early."""
        return self._heartbeat.cancel_requested.is_set()

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Add ``params`` to the run's parameters (its ``hyper_parameters``), written when the run ends.

        For parameters known only after the run started (a trainer integration's hyper-parameters);
        a name given to ``start_run`` keeps its value.

        Args:
            params: Names to values (numbers, strings, lists, dicts; numpy/torch scalars are converted).

        Raises:
            InvalidArgumentTypeError: ``params`` is not a mapping, or a value is not storable.
        """
        if not isinstance(params, Mapping):
            raise InvalidArgumentTypeError(f"params must be a dict of names to values, got {type(params).__name__}")
        plain = plain_params(params)
        with self._lock:
            for key, value in plain.items():
                self._extra_params.setdefault(key, value)

    def end(self, result: Mapping[str, Any] | None = None) -> None:
        """End the run ``finished`` (``cancelled`` if a cancel was requested) and write what it logged.

        A second call does nothing.

        Args:
            result: Values to record in the run's ``result``, on top of the last value of each
                metric it logged (validation and testing ones as ``validation_<name>``/
                ``testing_<name>``). Default ``None``: only those.

        Raises:
            InvalidArgumentTypeError: ``result`` is not a mapping.
            TensorHubError: The buffered log rows could not be written (the run is then
                recorded ``failed``).
        """
        if result is not None and not isinstance(result, Mapping):
            raise InvalidArgumentTypeError(f"result must be a dict of names to values, got {type(result).__name__}")
        self._end(FINISHED, result=result)

    def fail(self, exc: BaseException) -> None:
        """End the run ``failed`` with ``exc``'s message and traceback (what a raising ``with`` block does).

        Args:
            exc: The exception the run failed with.
        """
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self._end(FAILED, failure=bounded_failure(describe(exc), trace))

    def _end(self, status: str, result: Mapping[str, Any] | None = None,
             failure: Mapping[str, Any] | None = None) -> None:
        with self._lock:
            if self.ended:
                return
        error: BaseException | None = None
        try:
            self.close()  # writes the buffered rows
        except Exception as exc:  # noqa: BLE001 - recorded on the run, then raised
            error = exc
            status, failure = FAILED, bounded_failure(f"{self.pending} log rows could not be saved: {describe(exc)}")
        finally:
            self._heartbeat.stop()
            pop_interactive(self._stamp)
        if status == FINISHED and self._heartbeat.cancel_requested.is_set():
            status = CANCELLED
        fields: dict[str, Any] = dict(failure or {})
        if self._extra_params:
            fields["hyper_parameters"] = {**self._extra_params, **(self._claimed.get("hyper_parameters") or {})}
        if status != FAILED:
            final = {**self.final, **{k: scalar(k, v) if not isinstance(v, (Mapping, list)) else v
                                      for k, v in (result or {}).items()}}
            check_result_size(final)
            fields["result"] = final
        push = {"errors": {"attempt": 1, "error": fields["error"]}} if status == FAILED else None
        if not self._queue.end(self._claimed, status, fields, push=push):
            log.warning("run %s: its record was changed meanwhile (lease ran out, or deleted); %s not recorded",
                        self.id, status)
        if error is not None:
            raise error

    def at_exit(self) -> None:
        """The interpreter exits with the run open: it ends, ``failed`` if an exception ended the program."""
        import sys

        exc = getattr(sys, "last_value", None)  # set when an uncaught exception ended the main program
        if isinstance(exc, BaseException):
            self.fail(exc)
        else:
            self.end()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.end()
        else:
            self.fail(exc)

    def __repr__(self) -> str:
        return f"Run(id={self.id}, name={self.name!r}, ended={self.ended})"


def plain_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Run parameters as stored: numpy/torch scalars converted (:func:`~tensorhub.run_log.scalar`)."""
    hyper_parameters = {}
    for key, value in params.items():
        plain = (value is None or isinstance(value, (bool, int, float, str, list, tuple, Mapping, ObjectId))
                 and not hasattr(value, "shape"))
        hyper_parameters[key] = value if plain else scalar(key, value)
    return hyper_parameters


def start_run(records: Records, queue: TaskQueue, run_name: str | None = None, lease: float = DEFAULT_LEASE,
              params: Mapping[str, Any] | None = None) -> Run:
    """Start an interactive run (see the module docstring) with ``params`` as its hyper-parameters."""
    claimed = queue.start(DEFAULT_RUN_NAME if run_name is None else run_name, plain_params(params or {}), lease=lease)
    run = Run(records, queue, claimed, lease)
    log.info("run %s (%s) started", run.id, run.name)
    return run


# ---------------------------------------------------------------------------- listing and comparing
def _seconds(start: Any, end: Any) -> float | None:
    try:
        return round((end - start).total_seconds(), 3)
    except (TypeError, AttributeError):
        return None


def _log_metrics(records: Records, tasks: Sequence[Mapping[str, Any]]) -> dict[Any, dict[str, dict[str, Any]]]:
    """Per run id, per metric (``metric_key`` names): the final value (the newest row's), min, max, rows
    (non-NaN values), from the runs' log digests (:mod:`tensorhub.log_digest`; computed from the rows
    of runs that have none, in one query per log kind)."""
    found: dict[Any, dict[str, dict[str, Any]]] = {t["_id"]: {} for t in tasks}
    if not tasks:
        return found
    for kind in _logs.COLLECTIONS:
        for task_id, (digest, _) in log_digest.read(records, kind, tasks).items():
            for name, figures in digest.summary().items():
                found[task_id][metric_key(kind, name)] = figures
    return found


def run_filter(query: dict[str, Any]) -> dict[str, Any]:
    """A runs query as a task query: ``run_name`` is ``task_name``, ``run_type=\"task\"`` matches old tasks too."""
    if "run_name" in query:
        if "task_name" in query:
            raise InvalidArgumentError("pass run_name= or task_name= (the same field), not both")
        query["task_name"] = query.pop("run_name")
    if query.get("run_type") == TASK_RUN:  # tasks created before run_type existed have none
        query["run_type"] = {"$ne": INTERACTIVE_RUN}
    if "_id" in query and isinstance(query["_id"], (str, Mapping)) and not (
            isinstance(query["_id"], Mapping) and any(str(k).startswith("$") for k in query["_id"])):
        query["_id"] = as_object_id(query["_id"])
    return query


def find_runs(records: Records, queue: TaskQueue, sort: Any = None, limit: int | None = None,
              metrics: bool = True, **query: Any) -> list[dict]:
    """Runs (tasks and interactive runs) matching ``query`` (task fields; ``run_name`` is ``task_name``),
    newest first, each as a row of :data:`RUN_COLUMNS`. ``metrics`` maps each metric logged in the run
    (``metric_key`` names) to its ``final`` value, ``min``, ``max`` and ``count`` of rows; with
    ``metrics=False`` it is ``{}`` and no log row is read (a listing that polls, a run with 1M rows)."""
    query = run_filter(query)
    queue.expire({"run_type": INTERACTIVE_RUN})  # a dead process's interactive run ends as its lease says
    tasks = queue.find(query, sort=sort, limit=limit)
    found = _log_metrics(records, tasks) if metrics else {}
    rows = []
    for task in tasks:
        owner = task.get("owner") or {}
        end = task.get("finished_at")
        rows.append({
            "id": task["_id"], "run_name": task.get("task_name"), "run_type": task.get("run_type", TASK_RUN),
            "status": task.get("status"), "attempt": task.get("attempts"), "host": owner.get("host"),
            "pid": owner.get("pid"), "started_at": task.get("started_at"), "finished_at": end,
            "duration_s": _seconds(task.get("started_at"), end) if end else None,
            "params": task.get("hyper_parameters") or {}, "result": task.get("result"),
            "error": task.get("error"), "metrics": found.get(task["_id"], {})})
    return rows


def compare_runs(records: Records, queue: TaskQueue, run_name: str | None = None,
                 keys: Sequence[str] | str | None = None, sort: Any = None, limit: int | None = None,
                 **query: Any) -> list[dict]:
    """One row per run: ``run_name``, ``id``, ``status``, ``attempt``, ``duration_s``, its parameters as
    ``params.<name>``, then per key its final value (from the result, else the last logged) and, for
    logged metrics, ``best_<key>`` over the run's logs. Best first (see :meth:`TensorHub.compare_runs`)."""
    if isinstance(keys, str):
        keys = [keys]
    if keys is not None and not all(isinstance(k, str) and k for k in keys):
        error = InvalidArgumentError if all(isinstance(k, str) for k in keys) else InvalidArgumentTypeError
        raise error(f"keys must be metric names, got {keys!r}")
    if run_name is not None:
        query["run_name"] = run_name
    runs = find_runs(records, queue, limit=limit, **query)
    if keys is None:  # every numeric result and logged metric, first seen first
        seen: dict[str, None] = {}
        for run in runs:
            for k, v in (run["result"] or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    seen.setdefault(k)
            for k in run["metrics"]:
                seen.setdefault(k)
        keys = list(seen)
    order = _sort_order(sort, keys)
    directions = dict(order)
    params = list(dict.fromkeys(p for run in runs for p in run["params"]))
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run_name": run["run_name"], "id": run["id"], "status": run["status"],
                               "attempt": run["attempt"], "duration_s": run["duration_s"]}
        row.update({f"params.{p}": run["params"].get(p) for p in params})
        for key in keys:
            logged = run["metrics"].get(key)
            result = run["result"] or {}
            row[key] = result[key] if key in result else (logged or {}).get("final")
            if any(key in r["metrics"] for r in runs):
                best = (logged or {}).get("min" if directions.get(key, -1) == 1 else "max")
                row[f"best_{key}"] = best
        rows.append(row)
    for key, direction in reversed(order):  # stable sorts, last key first; runs without the value last
        present = [r for r in rows if isinstance(r.get(key), (int, float, str))]
        missing = [r for r in rows if not isinstance(r.get(key), (int, float, str))]
        present.sort(key=lambda r: r[key], reverse=direction == -1)
        rows = present + missing
    return rows


def _sort_order(sort: Any, keys: Sequence[str]) -> list[tuple[str, int]]:
    """``sort`` as ``[(column, 1 | -1)]``; by default the first key, higher first (as ``compare_models``)."""
    if sort is None:
        return [(keys[0], -1)] if keys else []
    if isinstance(sort, str):
        return [(sort, -1)]
    try:
        order = [(str(k), int(d)) for k, d in sort]
    except (TypeError, ValueError):
        raise InvalidArgumentTypeError(f"sort must be a column name or [(column, 1 | -1), ...], got {sort!r}") from None
    if any(d not in (1, -1) for _, d in order):
        raise InvalidArgumentError(f"sort directions are 1 (ascending) or -1 (descending), got {sort!r}")
    return order


def find_run_records(records: Records, run: Any) -> dict[str, Any]:
    """What a run saved: ``{"training_logs": n, "validation_logs": n, "testing_logs": n, "models": [ids],
    "datasets": [ids]}`` (log counts, model and dataset ids, newest first). ``run`` is a task or run
    record, or its id."""
    task_id = as_object_id(run)
    tasks = records.find(TASKS, {"_id": task_id}) or [{"_id": task_id}]
    found: dict[str, Any] = {}
    for kind, collection in _logs.COLLECTIONS.items():  # the digest counts the rows (or was computed from them)
        found[collection] = log_digest.read(records, kind, tasks, metric="")[task_id][0].total_rows
    found["models"] = [r["_id"] for r in records.find(_models.COLLECTION, {"task_id": task_id})]
    found["datasets"] = [r["_id"] for r in records.find(_datasets.COLLECTION, {"task_id": task_id})]
    return found
