"""Datasets: nested structures of numpy arrays, stored as ``.npy`` blobs with their schema in the record.

The record of a dataset holds ``dataset_name``, the user's fields, the structure ``spec``
(JSON text), and a ``schema`` list (path, dtype, shape, bytes, sha256 per array) so listings
show what a dataset holds without reading blobs. Arrays are blobs named ``array-<i>.npy``.
"""

from __future__ import annotations

from typing import Any

from tensorhub.arrays import LazyArray, checksum, from_npy, to_npy
from tensorhub.errors import InvalidArgumentError, NotFoundError
from tensorhub.records import Records
from tensorhub.structure import array_paths, dumps_spec, flatten, loads_spec, unflatten

COLLECTION = "datasets"


def _array_blob(i: int) -> str:
    return f"array-{i}.npy"


def _pickle_blob(i: int) -> str:
    return f"pickle-{i}.bin"


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(f"{what} must be a non-empty string, got {value!r}")
    return value


def save_dataset(records: Records, dataset: Any, dataset_name: str, allow_pickle: bool = False,
                 **fields: Any) -> Any:
    """Store ``dataset`` under ``dataset_name`` with ``fields`` as queryable tags; return the id."""
    _check_name(dataset_name, "dataset_name")
    flat = flatten(dataset, allow_pickle=allow_pickle)
    encoded = [to_npy(a) for a in flat.arrays]
    paths = dict((node["i"], path) for path, node in array_paths(flat.spec))
    schema = [
        {"path": paths.get(i, f"[{i}]"), "dtype": a.dtype.str, "shape": list(a.shape),
         "nbytes": int(a.nbytes), "sha256": checksum(data)}
        for i, (a, data) in enumerate(zip(flat.arrays, encoded))
    ]
    record = records.new_record({
        **fields,
        "dataset_name": dataset_name,
        "spec": dumps_spec(flat.spec),
        "schema": schema,
        "nbytes": sum(s["nbytes"] for s in schema),
        "pickled": bool(flat.pickles),
    })
    blobs = [(_array_blob(i), data) for i, data in enumerate(encoded)]
    blobs += [(_pickle_blob(i), data) for i, data in enumerate(flat.pickles)]
    return records.save(COLLECTION, record, blobs)


def load_dataset(records: Records, record: dict, lazy: bool = False, allow_pickle: bool = False) -> Any:
    """Rebuild the dataset a record describes (``lazy`` gives :class:`LazyArray` leaves)."""
    prefix = record.get("blob_prefix", "")
    schema = record.get("schema", [])

    def load_array(i: int, node: dict) -> Any:
        key = prefix + _array_blob(i)
        sha = schema[i]["sha256"] if i < len(schema) else None
        if lazy and node["t"] == "array":
            return LazyArray(records.blobs, key, sha)
        try:
            return from_npy(records.blobs.get(key), sha, f"array {i} of dataset {record.get('dataset_name')!r}")
        except NotFoundError as exc:
            raise NotFoundError(f"dataset {record.get('dataset_name')!r} ({record['_id']}) lost its blob {key}: "
                                "delete the record and save it again") from exc

    return unflatten(loads_spec(record["spec"]), load_array,
                     lambda i: records.blobs.get(prefix + _pickle_blob(i)), allow_pickle=allow_pickle)


def find_all_datasets(records: Records, dataset_name: str | None, sort: Any = None, lazy: bool = False,
                      allow_pickle: bool = False, limit: int | None = None, **query: Any) -> list:
    """Every matching dataset, newest first unless ``sort`` says otherwise."""
    if dataset_name is not None:
        query["dataset_name"] = _check_name(dataset_name, "dataset_name")
    found = records.find(COLLECTION, query, sort=sort, limit=limit)
    return [load_dataset(records, r, lazy=lazy, allow_pickle=allow_pickle) for r in found]
