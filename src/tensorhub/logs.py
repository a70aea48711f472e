"""Training, validation and testing logs: one small record per call (or per row of a batch).

Logs have no blobs. Each call returns once the index store has committed the record, so it
survives a crash of the calling process. Rows saved inside a run carry its ``task_id`` and
``attempt`` (stamped by :meth:`~tensorhub.records.Records.new_record`); queries take
``task_id=`` as an ObjectId, its hex string or the task record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bson import ObjectId

from tensorhub import log_digest
from tensorhub.errors import InvalidArgumentError, InvalidArgumentTypeError
from tensorhub.records import Records
from tensorhub.stamping import run_query

#: log kind -> collection
COLLECTIONS = {"training": "training_logs", "validation": "validation_logs", "testing": "testing_logs"}
#: fields a log row writes itself beyond :data:`~tensorhub.records.COMMON_INTERNAL_FIELDS`: none
INTERNAL_FIELDS: frozenset[str] = frozenset()
#: the indexes of this kind's collections (declared by the hub when it opens a store): a project's rows and a
#: run's, each in the default order (records.NEWEST_FIRST) whole, so a newest-first listing sorts nothing,
#: and a run's rows by step (curves, "the last 100 steps"), so a step-ordered read of a run is index-ordered;
#: and the indexes of the runs' log digests (:mod:`tensorhub.log_digest`), which this kind keeps
INDEXES = {**{collection: [[("project_name", 1), ("time", -1), ("_id", -1)],
                           [("project_name", 1), ("task_id", 1), ("time", -1), ("_id", -1)],
                           [("project_name", 1), ("task_id", 1), ("step", 1), ("_id", 1)]]
              for collection in COLLECTIONS.values()}, **log_digest.INDEXES}


def _collection(kind: str) -> str:
    if kind not in COLLECTIONS:
        raise InvalidArgumentError(f"log kinds are {sorted(COLLECTIONS)}, not {kind!r}")
    return COLLECTIONS[kind]


def save_logs(records: Records, kind: str, rows: Iterable[Mapping[str, Any]],
              own: Sequence[Mapping[str, Any]] | None = None) -> list[Any]:
    """Insert many log rows at once (one durable batch); return their ids in order.

    ``own`` (the repository's, never a user's): per row, fields tensorhub sets itself, e.g. a
    run's buffered rows give the ``time`` they were logged at and the run's ``task_id``/``attempt``.
    """
    if isinstance(rows, Mapping) or isinstance(rows, (str, bytes)):
        raise InvalidArgumentTypeError("save_*_logs takes an iterable of dicts, e.g. [{'loss': 0.3}, {'loss': 0.2}]")
    collection = _collection(kind)
    stamp = records.run_stamp()  # once per batch, not per row
    documents = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InvalidArgumentTypeError(f"each log row must be a dict, got {type(row).__name__}")
        documents.append(records.new_record(row, INTERNAL_FIELDS, "log", own[i] if own is not None else None,
                                            stamp=stamp))
    if documents:
        in_a_run = any(isinstance(d.get("task_id"), ObjectId) for d in documents)
        if in_a_run:
            log_digest.before_write(records, list(COLLECTIONS.values()))
        records.insert_many(collection, documents)
        if in_a_run:  # the rows are durable; then their runs' digests (charts, metric summaries)
            log_digest.record_batch(records, kind, documents)
    return [d["_id"] for d in documents]


def find_logs(records: Records, kind: str, query: Mapping[str, Any], sort: Any = None,
              limit: int | None = None) -> list[dict]:
    """Log rows of ``kind`` matching ``query``, newest first unless ``sort``."""
    return records.find(_collection(kind), run_query(dict(query)), sort=sort, limit=limit)


def delete_logs(records: Records, kind: str, query: Mapping[str, Any]) -> int:
    """Delete matching log rows of ``kind`` (all of the project's when ``query`` is empty); return how many.

    The digests of the runs those rows belong to are marked stale first (:func:`log_digest.mark_stale`):
    they are rebuilt from the remaining rows when read."""
    collection = _collection(kind)
    query = run_query(dict(query))
    task_id = query.get("task_id")
    if isinstance(task_id, ObjectId):
        runs = [task_id]
    else:  # which runs the rows belong to: read them (deletes are rare; a delete reads them anyway)
        runs = [r["task_id"] for r in records.find(collection, query) if isinstance(r.get("task_id"), ObjectId)]
    log_digest.mark_stale(records, kind, runs)
    return records.delete(collection, query)
