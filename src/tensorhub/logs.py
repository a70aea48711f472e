"""Training, validation and testing logs: one small record per call (or per row of a batch).

Logs have no blobs. Each call returns once the index store has committed the record, so it
survives a crash of the calling process.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tensorhub.errors import InvalidArgumentTypeError
from tensorhub.records import Records

#: log kind -> collection
COLLECTIONS = {"training": "training_logs", "validation": "validation_logs", "testing": "testing_logs"}
#: fields a log row writes itself beyond :data:`~tensorhub.records.COMMON_INTERNAL_FIELDS`: none
INTERNAL_FIELDS: frozenset[str] = frozenset()


def save_logs(records: Records, kind: str, rows: Iterable[Mapping[str, Any]]) -> list[Any]:
    """Insert many log rows at once (one durable batch); return their ids in order."""
    if isinstance(rows, Mapping) or isinstance(rows, (str, bytes)):
        raise InvalidArgumentTypeError("save_*_logs takes an iterable of dicts, e.g. [{'loss': 0.3}, {'loss': 0.2}]")
    documents = []
    for row in rows:
        if not isinstance(row, Mapping):
            raise InvalidArgumentTypeError(f"each log row must be a dict, got {type(row).__name__}")
        documents.append(records.new_record(row, INTERNAL_FIELDS, "log"))
    if documents:
        records.index.insert_many(COLLECTIONS[kind], documents)
    return [d["_id"] for d in documents]
