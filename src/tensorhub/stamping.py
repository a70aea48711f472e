"""Which run a record is saved in: the ``task_id`` and ``attempt`` stamped on logs, models and datasets.

A run is a task attempt (the runner sets the task's id and attempt in a context variable for
in-process scripts, in ``$TENSORHUB_TASK_ID``/``$TENSORHUB_TASK_ATTEMPT`` for a child process:
:mod:`tensorhub.context`) or an interactive run (``hub.start_run()``), which registers itself
here, process-wide, for the store it was started on. :func:`current_stamp` tells
:meth:`~tensorhub.records.Records.new_record` what to stamp, without any store round trip.

Interactive runs are process-wide rather than in a context variable on purpose: a notebook
runs each cell in a fresh context, so a run started in one cell would be gone in the next.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping
from typing import Any

from bson import ObjectId

from tensorhub.context import ENV_TASK_ID, current_attempt, current_task_id

log = logging.getLogger(__name__)

#: fields a run stamps on what is saved inside it; repository-owned on every stamped kind
RUN_FIELDS = frozenset({"task_id", "attempt"})
#: the record kinds (``new_record``'s ``kind``) stamped with the current run
STAMPED_KINDS = frozenset({"log", "model", "dataset"})

_lock = threading.Lock()
#: interactive runs of this process, oldest first: ``(store key, stamp)``
_interactive: list[tuple[str, dict[str, Any]]] = []


def push_interactive(store: str, task_id: ObjectId, attempt: int = 1) -> dict[str, Any]:
    """Make an interactive run current for records saved to ``store``; return its stamp (for :func:`pop_interactive`)."""
    stamp = {"task_id": task_id, "attempt": attempt}
    with _lock:
        _interactive.append((store, stamp))
    return stamp


def pop_interactive(stamp: Mapping[str, Any]) -> None:
    """The interactive run of ``stamp`` is no longer current."""
    with _lock:
        for i, (_, entry) in enumerate(_interactive):
            if entry is stamp:
                del _interactive[i]
                return


def interactive_stamp(store: str) -> dict[str, Any] | None:
    """The newest interactive run of this process on ``store``, or None."""
    if not _interactive:  # the common case, without the lock
        return None
    with _lock:
        for key, stamp in reversed(_interactive):
            if key == store:
                return stamp
    return None


@functools.lru_cache(maxsize=64)
def _task_stamp(task_id: str, attempt: int | None) -> dict[str, Any] | None:
    if not ObjectId.is_valid(task_id):
        log.warning("ignoring %s=%r: not a task id; records are saved without a task_id", ENV_TASK_ID, task_id)
        return None
    return {"task_id": ObjectId(task_id), "attempt": attempt if attempt is not None else 1}


def current_stamp(store: str) -> dict[str, Any] | None:
    """``{"task_id", "attempt"}`` of the run a record saved now to ``store`` belongs to, or None.

    An interactive run on the same store wins (it was started inside whatever runs now); else
    the task this code runs as, whatever the store (a task's script may save elsewhere too).
    The returned dict is shared: copy its items, never change it.
    """
    stamp = interactive_stamp(store)
    if stamp is not None:
        return stamp
    task = current_task_id()
    return _task_stamp(task, current_attempt()) if task else None


def run_query(query: dict[str, Any]) -> dict[str, Any]:
    """A query where ``task_id`` may be a record or a 24-hex string (as lineage takes it): made an ObjectId."""
    value = query.get("task_id")
    if isinstance(value, str) and ObjectId.is_valid(value):
        query["task_id"] = ObjectId(value)
    elif isinstance(value, Mapping) and isinstance(value.get("_id"), (ObjectId, str)):
        query["task_id"] = ObjectId(str(value["_id"]))
    return query
