"""Checkpoints of a run: ``run.checkpoint(model, step=...)`` and ``hub.latest_checkpoint(run)``.

A checkpoint is a model record like any other (saved through the models kind: chunked, deduplicated,
with lineage), named ``<run name>/checkpoint`` by default and marked by the repository-owned field
``checkpoint_step``; it carries its run's ``task_id`` and ``attempt``. So a task that a retry
(``retry_on_error``) or an expired lease (its runner died) runs again as attempt 2 finds attempt 1's
newest checkpoint with :func:`latest_checkpoint` (the highest step over every attempt of the task) and
resumes from there instead of from scratch. Checkpoints are deleted as models are
(``hub.delete_model(task=run_id, checkpoint_step={"$exists": True})``), their unshared chunks with them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from bson import ObjectId

from tensorhub.errors import InvalidArgumentError, InvalidArgumentTypeError
from tensorhub.models import _repository as _models
from tensorhub.records import Records, as_object_id

log = logging.getLogger(__name__)

#: the model field that marks a checkpoint and holds its step (owned by the repository)
STEP_FIELD = "checkpoint_step"
#: newest checkpoint first: the highest step, then the latest save of that step
NEWEST = [(STEP_FIELD, -1), ("_id", -1)]


def checked_step(step: Any) -> int:
    """``step`` as an int (numpy/torch integer scalars accepted), or a clear error."""
    if hasattr(step, "item") and not isinstance(step, (bool, int)):
        step = step.item()
    if isinstance(step, bool) or not isinstance(step, int):
        raise InvalidArgumentTypeError(f"step must be an int (the training step or epoch the checkpoint was taken "
                                       f"at), got {step!r}")
    return step


def save_checkpoint(records: Records, task_id: ObjectId, attempt: int, model: Any, step: Any,
                    model_name: str, **fields: Any) -> Any:
    """Save ``model`` as a checkpoint of run ``task_id`` (attempt ``attempt``) at ``step``; return the record id."""
    step = checked_step(step)
    for option in ("task", "task_id"):
        if option in fields:
            raise InvalidArgumentError(f"{option}= is not an option of checkpoint: a checkpoint belongs to its run "
                                       f"({task_id}); save a model with other lineage through save_model")
    return _models.save_model(records, model, model_name, own={"task_id": task_id, "attempt": attempt,
                                                               STEP_FIELD: step}, **fields)


def run_id(run: Any) -> ObjectId:
    """The task id of ``run``: a :class:`~tensorhub.runs.Run` (or any object with an ``id``), a run row of
    ``find_runs`` (``id``), a task record (``_id``), an ``ObjectId`` or its hex string."""
    if isinstance(run, Mapping) and "_id" not in run and "id" in run:
        run = run["id"]
    elif not isinstance(run, (str, ObjectId, Mapping)) and isinstance(getattr(run, "id", None), ObjectId):
        run = run.id
    try:
        return as_object_id(run)
    except InvalidArgumentError as exc:
        raise type(exc)(f"run must be a run (hub.start_run's), a run row or task record, or its id; got {run!r}") \
            from None


def latest_checkpoint(records: Records, run: Any, **options: Any) -> Any:
    """The checkpoint of ``run`` with the highest step over all its attempts, loaded, or None."""
    checked = _models.check_load_options(options)
    found = records.find(_models.COLLECTION, {"task_id": run_id(run), STEP_FIELD: {"$exists": True}},
                         sort=NEWEST, limit=1)
    if not found:
        return None
    return _models.load_model(records, found[0], **checked)
