"""Records of any kind, for generic tools (``tensorhub ls/show/rm``, a UI): the projects of a
store with their record counts, one kind's records by query (no blob read), and one record with
its lineage. The kinds' own modules stay the owners of their collections; this module only names
them in one table (:data:`COLLECTIONS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bson import ObjectId

from tensorhub import datasets as _datasets
from tensorhub import logs as _logs
from tensorhub import tasks as _tasks
from tensorhub.errors import InvalidArgumentError
from tensorhub.models import _repository as _models
from tensorhub.records import Records, as_object_id

#: each kind's collection, by its plural name (``runs`` are task records: task attempts and interactive runs)
COLLECTIONS: dict[str, str] = {
    "datasets": _datasets.COLLECTION,
    "models": _models.COLLECTION,
    "tasks": _tasks.COLLECTION,
    "runs": _tasks.COLLECTION,
    **{f"{kind}_logs": collection for kind, collection in _logs.COLLECTIONS.items()},
}
#: other spellings of the kinds: singular, hyphenated, ``logs`` for training logs
_ALIASES = {"logs": "training_logs", "log": "training_logs"}
#: the name field of each collection, shown in lineage summaries
_NAME_FIELDS = {_datasets.COLLECTION: "dataset_name", _models.COLLECTION: "model_name", _tasks.COLLECTION: "task_name"}
#: at most this many related records are listed in a lineage (the count says how many there are)
LINEAGE_LIMIT = 100


def kind_name(kind: str) -> str:
    """The canonical kind (a key of :data:`COLLECTIONS`) of ``kind``: ``model``/``models``,
    ``training-logs``/``training_log``/``logs``... are accepted."""
    name = str(kind).strip().lower().replace("-", "_")
    name = _ALIASES.get(name, name)
    if name not in COLLECTIONS and name + "s" in COLLECTIONS:
        name += "s"
    if name not in COLLECTIONS:
        raise InvalidArgumentError(f"unknown record kind {kind!r}; the kinds are {', '.join(COLLECTIONS)} "
                                   "(and logs = training_logs)")
    return name


def list_projects(records: Records) -> list[dict[str, Any]]:
    """Every project of the store (sorted by name), with its record counts per kind.

    One row per project: ``project_name``, ``datasets``, ``models``, ``training_logs``,
    ``validation_logs``, ``testing_logs``, ``tasks`` (task records: queued tasks and runs) and
    ``tasks_by_status`` (``{"finished": 3, ...}``). One grouped count per collection.
    """
    counted = [kind for kind in COLLECTIONS if kind not in ("tasks", "runs")]
    projects: dict[str, dict[str, Any]] = {}

    def row(project: Any) -> dict[str, Any] | None:
        if not isinstance(project, str):  # not a record tensorhub wrote: no project to list
            return None
        return projects.setdefault(project, {"project_name": project, **dict.fromkeys(counted, 0), "tasks": 0,
                                             "tasks_by_status": {}})

    for kind in counted:
        for (project,), count in records.count_every_project(COLLECTIONS[kind]).items():
            if (found := row(project)) is not None:
                found[kind] += count
    for (project, status), count in records.count_every_project(_tasks.COLLECTION, ["status"]).items():
        if (found := row(project)) is not None:
            found["tasks"] += count
            found["tasks_by_status"][str(status)] = found["tasks_by_status"].get(str(status), 0) + count
    return [projects[name] for name in sorted(projects)]


def find_records(records: Records, kind: str, query: Mapping[str, Any], sort: Any = None,
                 limit: int | None = None) -> list[dict]:
    """This project's records of ``kind`` matching ``query`` (newest first unless ``sort``), no blob read."""
    return records.find(COLLECTIONS[kind_name(kind)], query, sort=sort, limit=limit)


def id_query(record_id: Any) -> dict[str, Any]:
    """A filter matching a reference field that holds ``record_id`` as an ObjectId or as its hex text
    (records written by other tools, or environment variables, may carry either)."""
    oid = as_object_id(record_id)
    return {"$in": [oid, str(oid)]}


def _summary(record: Mapping[str, Any], collection: str) -> dict[str, Any]:
    keys = ["_id", _NAME_FIELDS.get(collection, ""), "time", "status", "attempt"]
    return {key: record[key] for key in keys if key in record}


def _related(records: Records, collection: str, field: str, record_id: ObjectId) -> dict[str, Any]:
    query = {field: id_query(record_id)}
    found = records.find(collection, query, limit=LINEAGE_LIMIT)
    count = len(found) if len(found) < LINEAGE_LIMIT else records.count(collection, query)
    return {"count": count, "records": [_summary(r, collection) for r in found]}


def _referenced(records: Records, collection: str, value: Any) -> dict[str, Any] | None:
    """The summary of the record ``value`` names in ``collection`` (this project's), or a note that it is not there."""
    if value is None:
        return None
    try:
        oid = as_object_id(value)
    except InvalidArgumentError:
        return {"_id": value, "missing": "not a record id"}
    found = records.find_one(collection, {"_id": oid})
    return _summary(found, collection) if found else {"_id": oid, "missing": "not in this project"}


def describe(records: Records, kind: str, record_id: Any) -> dict[str, Any] | None:
    """``{"kind", "record", "lineage"}`` for this project's record ``record_id`` of ``kind``, or None.

    The record is whole (as stored, no blob read). Lineage: a model's ``dataset`` and ``task``; a
    task's or run's ``logs`` (counts per log kind), ``models`` and ``datasets`` saved by it; a
    dataset's ``models``; a log row's ``task``.
    """
    name = kind_name(kind)
    collection = COLLECTIONS[name]
    oid = as_object_id(record_id)
    record = records.find_one(collection, {"_id": oid})
    if record is None:
        return None
    lineage: dict[str, Any] = {}
    if collection == _models.COLLECTION:
        lineage["dataset"] = _referenced(records, _datasets.COLLECTION, record.get("dataset_id"))
        lineage["task"] = _referenced(records, _tasks.COLLECTION, record.get("task_id"))
    elif collection == _tasks.COLLECTION:
        lineage["logs"] = {f"{kind}_logs": records.count(logs, {"task_id": id_query(oid)})
                           for kind, logs in _logs.COLLECTIONS.items()}
        lineage["models"] = _related(records, _models.COLLECTION, "task_id", oid)
        lineage["datasets"] = _related(records, _datasets.COLLECTION, "task_id", oid)
    elif collection == _datasets.COLLECTION:
        lineage["models"] = _related(records, _models.COLLECTION, "dataset_id", oid)
    else:  # a log row
        lineage["task"] = _referenced(records, _tasks.COLLECTION, record.get("task_id"))
    return {"kind": name, "record": record, "lineage": lineage}
