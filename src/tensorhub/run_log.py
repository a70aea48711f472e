"""The logging call of training loops: ``run.log(step=..., loss=...)`` and ``hub.log(...)``, buffered.

A :class:`RunLogger` keeps the rows a run logs in memory and writes them in batches through the
same path as ``save_training_logs`` (:func:`tensorhub.logs.save_logs`): when :data:`FLUSH_ROWS`
rows wait, when the oldest has waited :data:`FLUSH_SECONDS` (checked at each call and by a
background thread), at the end of the run, at the end of a task's script (before its result is
recorded: :func:`end_task_runs`), when its hub is closed, and at interpreter exit (``atexit``).
So per-step logging costs about what one batch write per flush costs. Each row gets ``step``, the
metrics, the run's ``task_id`` and ``attempt``, and the ``time`` it was logged at (not flushed at).

A flush that fails keeps its rows for the next one and logs a warning; the end of a run raises
the error instead, so rows are never dropped silently.

``hub.log`` resolves its run with :func:`current_run`: the newest interactive run of this process
on the hub's store, else the task this code runs as (in-process or in its child process).
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import os
import sys
import threading
import time
from typing import Any

import numpy as np
from bson import ObjectId

from tensorhub import checkpoints as _checkpoints
from tensorhub.errors import InvalidArgumentError, InvalidArgumentTypeError, NoActiveRunError
from tensorhub.logs import COLLECTIONS, save_logs
from tensorhub.records import COMMON_INTERNAL_FIELDS, Records, utcnow
from tensorhub.stamping import RUN_FIELDS, current_stamp
from tensorhub.tasks import COLLECTION as TASKS

log = logging.getLogger(__name__)

#: rows waiting in a run's buffer that make the next ``log`` call write them
FLUSH_ROWS = 1000
#: seconds the oldest waiting row may wait before it is written
FLUSH_SECONDS = 2.0
#: names a metric may not have: the row fields tensorhub sets
RESERVED = COMMON_INTERNAL_FIELDS | RUN_FIELDS | {"step"}

_PLAIN = (float, int, str, bool)


def scalar(name: str, value: Any) -> Any:
    """``value`` as a plain Python scalar: numpy scalars and 0-d (one-element) arrays and torch tensors
    become numbers with ``.item()``; anything else is a clear error. torch is never imported here."""
    kind = type(value)
    if kind in _PLAIN or value is None:
        return value
    if isinstance(value, (np.generic, np.ndarray)):
        if np.size(value) == 1:
            return value.item()
    else:
        torch = sys.modules.get("torch")  # only when the caller has imported it: a tensor implies it
        if torch is not None and isinstance(value, torch.Tensor):
            if value.numel() == 1:
                return value.item()
        else:
            for plain in (bool, int, float, str):  # subclasses (an IntEnum, a str Enum): stored as the plain type
                if isinstance(value, plain):
                    return plain(value)
    raise InvalidArgumentTypeError(
        f"log values are numbers or strings (Python, numpy scalars, one-element numpy arrays or torch tensors); "
        f"{name}= is a {kind.__name__}{' of shape ' + str(tuple(value.shape)) if hasattr(value, 'shape') else ''}; "
        "log a scalar (e.g. loss.item()), or save arrays with save_dataset")


def metric_key(kind: str, name: str) -> str:
    """The name of a logged metric in a run's result: ``name`` for training, ``<kind>_<name>`` otherwise."""
    return name if kind == "training" else f"{kind}_{name}"


class RunLogger:
    """The buffered log rows of one run (task attempt or interactive run), written in batches.

    Thread-safe: ``log`` may be called from several threads; a batch write holds the lock
    (a concurrent ``log`` waits for it: milliseconds every :data:`FLUSH_ROWS` rows).
    """

    def __init__(self, records: Records, task_id: ObjectId, attempt: int) -> None:
        self.records = records
        #: the run's id: the ``_id`` of its task record
        self.id = task_id
        self.attempt = attempt
        self._stamp = {"task_id": task_id, "attempt": attempt}
        self._buffers: dict[str, list[tuple[dict[str, Any], dt.datetime]]] = {}
        self._pending = 0
        self._first_at = 0.0  # monotonic time the oldest waiting row was logged
        self._retry_at = 0.0  # after a failed flush, no new try from log() before this
        self._steps: dict[str, int] = {}
        #: the last value of each metric logged (``metric_key`` names): a run's final metrics
        self.final: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self.ended = False
        self._name: str | None = None
        self._pid = os.getpid()  # a forked child inherits the object, not the run: it never ends it at exit
        _live.add(self)

    # ------------------------------------------------------------------ logging
    def log(self, step: int | None = None, kind: str = "training", **metrics: Any) -> None:
        """Log one row of ``metrics`` at ``step`` to the ``kind`` logs; it is written with the next batch.

        Args:
            step: The row's step (an int, or a numpy/torch integer scalar). Default ``None``: the
                previous step of this kind plus one (0 first).
            kind: ``"training"`` (default), ``"validation"`` or ``"testing"``.
            **metrics: At least one value: Python numbers/strings, numpy scalars, one-element
                numpy arrays or torch tensors (converted with ``.item()``).

        Raises:
            InvalidArgumentError: An unknown ``kind``, no metric, or a metric named as a field
                tensorhub sets (``task_id``, ``attempt``, ``step``, ``time``...).
            InvalidArgumentTypeError: A value that is not a scalar.
            NoActiveRunError: The run has ended.
        """
        if kind not in COLLECTIONS:
            raise InvalidArgumentError(f"log kinds are {sorted(COLLECTIONS)}, not {kind!r}")
        if not metrics:
            raise InvalidArgumentError("log needs at least one metric, e.g. run.log(step=3, loss=0.25)")
        row: dict[str, Any] = {}
        for name, value in metrics.items():
            if name in RESERVED or name.startswith("$"):
                raise InvalidArgumentError(f"{name!r} is set by tensorhub on every log row; log it under another "
                                           "name, e.g. user_" + name.lstrip("$"))
            row[name] = value if type(value) in _PLAIN else scalar(name, value)
        now = utcnow()
        with self._lock:
            if self.ended:
                raise NoActiveRunError(f"run {self.id} has ended; start a new one to log more")
            if step is None:
                step = self._steps.get(kind, -1) + 1
            elif type(step) is not int:
                step = scalar("step", step)
                if isinstance(step, bool) or not isinstance(step, int):
                    raise InvalidArgumentTypeError(f"step must be an int, got {step!r}")
            self._steps[kind] = step
            if kind == "training":
                self.final.update(row)
            else:
                self.final.update({metric_key(kind, k): v for k, v in row.items()})
            row["step"] = step
            batch = self._buffers.get(kind)
            if batch is None:
                batch = self._buffers[kind] = []
            batch.append((row, now))
            self._pending += 1
            clock = time.monotonic()
            if self._pending == 1:
                self._first_at = clock
                if self._flusher is None:
                    self._start_flusher()
            due = (self._pending >= FLUSH_ROWS or clock - self._first_at >= FLUSH_SECONDS) and clock >= self._retry_at
            if due:
                self.flush(quiet=True)

    def flush(self, quiet: bool = False) -> int:
        """Write the waiting rows now (one batch per log kind); return how many were written.

        If the store refuses a batch, its rows stay for the next flush.

        Args:
            quiet: Default ``False``: a refused batch raises. ``True`` logs a warning instead.
        """
        written = 0
        with self._lock:
            for kind in list(self._buffers):
                batch = self._buffers[kind]
                try:
                    save_logs(self.records, kind, [row for row, _ in batch],
                              own=[{**self._stamp, "time": at} for _, at in batch])
                except Exception as exc:
                    self._retry_at = time.monotonic() + FLUSH_SECONDS
                    if not quiet:
                        raise
                    log.warning("run %s: %d log rows could not be saved yet (%s: %s); they are kept and "
                                "retried at the next flush", self.id, self._pending, type(exc).__name__, exc)
                    return written
                del self._buffers[kind]
                self._pending -= len(batch)
                written += len(batch)
            self._first_at = time.monotonic()
        return written

    @property
    def pending(self) -> int:
        """Rows logged and not yet written."""
        return self._pending

    @property
    def name(self) -> str:
        """The run's name: its task record's ``task_name`` (read once)."""
        if self._name is None:
            found = self.records.find(TASKS, {"_id": self.id}, limit=1)
            self._name = str(found[0].get("task_name") or "run") if found else "run"
        return self._name

    def checkpoint(self, model: Any, step: Any, model_name: str | None = None, **fields: Any) -> Any:
        """Save ``model`` as this run's checkpoint at ``step``, so a later attempt can resume from it.

        The checkpoint is a model record (chunked, so tensors unchanged since the previous checkpoint
        are not stored again) with this run's ``task_id`` and ``attempt`` and ``checkpoint_step``;
        :meth:`TensorHub.latest_checkpoint <tensorhub.TensorHub.latest_checkpoint>` finds the newest
        one over all attempts. The rows logged so far are written first, so what a resumed attempt
        finds logged is at least what its checkpoint saw.

        Args:
            model: What ``save_model`` stores: a ``torch.nn.Module``, a scikit-learn estimator, a
                (nested) list/dict of numpy arrays (e.g. Keras' ``get_weights()``), ...
            step: The step (or epoch) the checkpoint is taken at: an int; the highest is the latest.
            model_name: The record's ``model_name``. Default ``None``: ``"<run name>/checkpoint"``.
            **fields: Tags (e.g. ``val_loss=0.3``) and ``save_model``'s options (``dataset=``,
                ``allow_pickle=``...), except ``task=``: a checkpoint belongs to its run.

        Returns:
            The checkpoint's model record ``_id``.

        Raises:
            InvalidArgumentTypeError: ``step`` is not an int.
            NoActiveRunError: The run has ended.

        Example::

            for step in range(start, steps):
                ...
                run.checkpoint(net, step=step, loss=float(loss))
        """
        if self.ended:
            raise NoActiveRunError(f"run {self.id} has ended; start a new one to checkpoint")
        step = _checkpoints.checked_step(step)
        self.flush(quiet=True)
        name = model_name if model_name is not None else f"{self.name}/checkpoint"
        return _checkpoints.save_checkpoint(self.records, self.id, self.attempt, model, step, name, **fields)

    def _start_flusher(self) -> None:
        """A daemon thread that writes rows which waited :data:`FLUSH_SECONDS` while no ``log`` came."""
        def run() -> None:
            while not self._stop.wait(FLUSH_SECONDS / 2):
                if self._pending and time.monotonic() - self._first_at >= FLUSH_SECONDS \
                        and time.monotonic() >= self._retry_at:
                    self.flush(quiet=True)

        self._flusher = threading.Thread(target=run, name=f"tensorhub-run-log-{self.id}", daemon=True)
        self._flusher.start()

    def close(self) -> None:
        """Stop logging: write what waits (raising if it cannot be written) and stop the flusher thread."""
        with self._lock:
            self.ended = True
        self._stop.set()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join(10)
        _live.discard(self)
        self.flush()

    def at_exit(self) -> None:
        """The interpreter exits while the run is open: write what waits (an interactive run also ends)."""
        self.close()


class _Live:
    """The open loggers of this process (for ``hub.log``, ``hub.close`` and ``atexit``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loggers: list[RunLogger] = []

    def add(self, logger: RunLogger) -> None:
        with self._lock:
            self._loggers.append(logger)

    def discard(self, logger: RunLogger) -> None:
        with self._lock:
            if logger in self._loggers:
                self._loggers.remove(logger)

    def all(self) -> list[RunLogger]:
        with self._lock:
            return list(self._loggers)


_live = _Live()
#: loggers of task runs made by ``hub.log`` inside a task: (id of the hub's Records, task id, attempt)
_task_loggers: dict[tuple[int, ObjectId, int], RunLogger] = {}
_task_lock = threading.Lock()


def current_run(records: Records) -> RunLogger:
    """The run ``hub.log`` writes to: this process's newest interactive run on the hub's store, else
    the task this code runs as; :class:`NoActiveRunError` outside any run."""
    stamp = current_stamp(records.store_key)
    if stamp is None:
        raise NoActiveRunError("hub.log needs a run: call it inside a task's script, or start an interactive run "
                               "(`with hub.start_run(lr=0.1) as run: run.log(step=i, loss=loss)`); to save rows "
                               "outside any run, use save_training_log(s)")
    for logger in reversed(_live.all()):
        if logger._stamp is stamp:  # the interactive run registered this very stamp
            return logger
    key = (id(records), stamp["task_id"], stamp["attempt"])
    with _task_lock:
        task_logger = _task_loggers.get(key)
        if task_logger is None or task_logger.ended:
            task_logger = _task_loggers[key] = RunLogger(records, stamp["task_id"], stamp["attempt"])
        return task_logger


def run_or_none(records: Records) -> RunLogger | None:
    """:func:`current_run`, or None outside any run (for callers that start one then: the integrations)."""
    try:
        return current_run(records)
    except NoActiveRunError:
        return None


def flush_records(records: Records) -> None:
    """Write what the open loggers of ``records`` (a hub being closed) hold; their rows cannot wait."""
    for logger in _live.all():
        if logger.records is records:
            logger.flush()
    with _task_lock:
        for key in [k for k, v in _task_loggers.items() if v.records is records]:
            _task_loggers.pop(key).close()


def end_task_runs(task_id: str, quiet: bool = False) -> None:
    """A task's script has ended: write the rows its ``hub.log`` calls left (before its result is recorded).

    Raises when they cannot be written (the task then fails, rather than losing them silently),
    unless ``quiet`` (the script failed already: its own error is the one to report).
    """
    with _task_lock:
        loggers = [_task_loggers.pop(k) for k in [k for k in _task_loggers if str(k[1]) == task_id]]
    for logger in loggers:
        try:
            logger.close()
        except Exception:
            if not quiet:
                raise
            log.error("task %s: %d log rows could not be saved", task_id, logger.pending, exc_info=True)


@atexit.register
def _at_exit() -> None:
    for logger in reversed(_live.all()):
        if logger._pid != os.getpid():
            continue
        try:
            logger.at_exit()
        except Exception:  # noqa: BLE001 - the interpreter exits: say what is lost, and go on
            log.error("run %s: %d log rows could not be saved before exit", logger.id, logger.pending,
                      exc_info=True)
