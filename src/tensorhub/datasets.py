"""Datasets: nested structures of arrays, stored as compressed content-addressed chunks.

A dataset record holds ``dataset_name``, the user's fields, the structure ``spec`` (JSON text),
a ``schema`` entry per array (path, dtype, shape, bytes, checksum, and its chunk manifest),
``rows`` (the shared first-axis length, when the arrays have one), a ``revision`` that grows
with every append, and ``blob_refs`` (the chunks it uses). Listings read the schema without
touching blobs; loading reads chunks in parallel; ``lazy=True`` gives :class:`ChunkedArray`
leaves that read only the chunks a slice needs.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tensorhub.chunks import (
    DEFAULT_CHUNK_BYTES,
    ChunkCache,
    ChunkedArray,
    ChunkWriter,
    Manifest,
    CHUNK_FORMAT,
    blocks_of,
    pad_rows,
    read_all,
    read_chunk,
    read_rows,
)
from tensorhub.errors import (
    ConflictError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    NotFoundError,
    SerializationError,
    TensorHubError,
)
from tensorhub.records import REFS_FIELD, Records, blob_prefix
from tensorhub.stamping import run_query
from tensorhub.structure import array_paths, dumps_spec, flatten, loads_spec, unflatten

logger = logging.getLogger(__name__)
COLLECTION = "datasets"
APPEND_RETRIES = 20
#: fields a dataset record writes itself beyond :data:`~tensorhub.records.COMMON_INTERNAL_FIELDS`: a user
#: tag of the same name would be replaced
INTERNAL_FIELDS = frozenset({"dataset_name", "spec", "schema", "nbytes", "rows", "pickled", "revision"})
#: the indexes of this kind's collection (declared by the hub when it opens a store)
INDEXES = {COLLECTION: [[("project_name", 1), ("dataset_name", 1), ("time", -1), ("_id", -1)]]}


def _pickle_blob(i: int) -> str:
    return f"pickle-{i}.bin"


def check_name(value: Any, what: str = "dataset_name") -> str:
    if not isinstance(value, str) or not value:
        error = InvalidArgumentError if isinstance(value, str) else InvalidArgumentTypeError
        raise error(f"{what} must be a non-empty string, got {value!r}")
    return value


def _schema_entry(path: str, array: np.ndarray, manifest: Manifest) -> dict[str, Any]:
    return {"path": path, "nbytes": int(array.nbytes), "checksum": manifest.checksum(), **manifest.to_doc()}


def _shared_rows(schema: list[dict]) -> int | None:
    """The first-axis length every array shares, or None when they differ (or there is none)."""
    lengths = {s["shape"][0] if s["shape"] else None for s in schema}
    return lengths.pop() if len(lengths) == 1 else None


def save_dataset(records: Records, dataset: Any, dataset_name: str | None, allow_pickle: bool = False,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, **fields: Any) -> Any:
    """Store ``dataset`` under ``dataset_name`` with ``fields`` as queryable tags; return the id."""
    dataset_name = check_name(dataset_name)
    if dataset is None:  # find_dataset's "no such dataset": a saved None could not be told apart from it
        raise InvalidArgumentTypeError(f"dataset {dataset_name!r} is None; pass a numpy array or a list/tuple/dict of "
                                   "arrays and JSON values")
    # validates fields before any work or write
    record = records.new_record(fields, INTERNAL_FIELDS, "dataset", {"dataset_name": dataset_name})
    flat = flatten(dataset, allow_pickle=allow_pickle)
    paths = {node["i"]: path for path, node in array_paths(flat.spec)}
    writer = ChunkWriter(records.blobs, chunk_bytes, desc=f"saving {dataset_name}")
    try:
        schema = [_schema_entry(paths.get(i, f"[{i}]"), a, writer.write(a)) for i, a in enumerate(flat.arrays)]
    except BaseException:
        records.release_chunks(writer.refs)
        raise
    record.update({
        "spec": dumps_spec(flat.spec),
        "schema": schema,
        "nbytes": sum(s["nbytes"] for s in schema),
        "rows": _shared_rows(schema),
        "pickled": bool(flat.pickles),
        "revision": 1,
    })
    blobs = [(_pickle_blob(i), data) for i, data in enumerate(flat.pickles)]
    return records.save(COLLECTION, record, blobs, refs=writer.refs)


def load_dataset(records: Records, record: dict, lazy: bool = False, allow_pickle: bool = False) -> Any:
    """Rebuild the dataset a record describes (``lazy`` gives :class:`ChunkedArray` leaves)."""
    prefix = blob_prefix(COLLECTION, record["_id"])  # computed: a stored field could name another record's blobs
    schema = record["schema"]
    cache = ChunkCache() if lazy else None
    name = record.get("dataset_name")

    def load_array(i: int, node: dict) -> Any:
        manifest = Manifest.from_doc(schema[i])
        if lazy and node["t"] == "array":
            return ChunkedArray(records.blobs, manifest, cache)
        try:
            return read_all(records.blobs, manifest, desc=f"loading {name}")
        except TensorHubError as exc:
            raise type(exc)(f"dataset {name!r} ({record['_id']}), array {schema[i]['path']}: {exc}") from exc

    return unflatten(loads_spec(record["spec"]), load_array,
                     lambda i: records.blobs.get(prefix + _pickle_blob(i)), allow_pickle=allow_pickle)


def find_records(records: Records, dataset_name: str | None, query: dict[str, Any], sort: Any = None,
                 limit: int | None = None) -> list[dict]:
    if dataset_name is not None:
        query["dataset_name"] = check_name(dataset_name)
    return records.find(COLLECTION, run_query(query), sort=sort, limit=limit)


def find_dataset_records(records: Records, dataset_name: Any, query: dict[str, Any], sort: Any = None,
                         limit: int | None = None) -> list[dict]:
    """The records of matching datasets, no blob read (``dataset_name`` may be a query, e.g. ``{"$in": [...]}``)."""
    if dataset_name is not None:
        query["dataset_name"] = dataset_name
    return records.find(COLLECTION, run_query(query), sort=sort, limit=limit)


def find_all_datasets(records: Records, dataset_name: str | None, sort: Any = None, lazy: bool = False,
                      allow_pickle: bool = False, limit: int | None = None, **query: Any) -> list:
    """Every matching dataset, newest first unless ``sort`` says otherwise."""
    found = find_records(records, dataset_name, query, sort=sort, limit=limit)
    return [load_dataset(records, r, lazy=lazy, allow_pickle=allow_pickle) for r in found]


def open_zarr(records: Records, dataset_name: str | None, sort: Any = None, **query: Any) -> Any:
    """The newest (or first by ``sort``) matching dataset as a read-only ``zarr.Group`` (:mod:`tensorhub.zarr_view`)."""
    found = find_records(records, dataset_name, query, sort=sort, limit=1)
    if not found:
        raise NotFoundError(f"no dataset {dataset_name!r} matches {query or 'the query'}")
    from tensorhub import zarr_view  # zarr is optional: imported only here

    return zarr_view.open_zarr(records.blobs, found[0])


def needs_upgrade(record: dict) -> bool:
    """Whether a dataset record has arrays in an older chunk format than :data:`~tensorhub.chunks.CHUNK_FORMAT`."""
    return any(entry.get("chunk_format", 1) < CHUNK_FORMAT for entry in record.get("schema", ()))


def _upgraded_entry(writer: ChunkWriter, records: Records, entry: dict) -> dict:
    """``entry`` with its chunks rewritten in the current chunk format, one chunk at a time."""
    manifest = Manifest.from_doc(entry)
    if manifest.chunk_format >= CHUNK_FORMAT:
        return entry
    count = len(manifest.chunks)

    def blocks() -> Any:
        for i in range(count):
            block = read_chunk(records.blobs, manifest, i)  # verified against its digest
            if not manifest.shape:
                yield block.reshape(1)
            elif count > 1 and len(block) < manifest.chunk_rows:
                yield pad_rows(block, manifest.chunk_rows), True
            else:
                yield block

    new = Manifest(manifest.dtype, manifest.shape, manifest.chunk_rows, writer.write_blocks(blocks(), count),
                   manifest.descr, CHUNK_FORMAT)
    return {**entry, **new.to_doc(), "checksum": new.checksum()}


def upgrade_datasets(records: Records, dataset_name: Any = None, dry_run: bool = False,
                     **query: Any) -> dict[str, int]:
    """Rewrite matching datasets stored in an older chunk format in the current one (zarr-readable).

    Per record: the new chunks are written first, then the record is swapped with a
    compare-and-set on its ``revision`` (as an append; a record changed meanwhile is read again),
    then the old chunks no record lists any more are deleted. A crash at any point leaves the
    record whole (old or new) and at worst unreferenced chunks for ``tensorhub gc``. Returns
    ``{"datasets": upgraded (or, with dry_run, to upgrade), "arrays": ..., "current": already current}``.
    """
    counts = {"datasets": 0, "arrays": 0, "current": 0}
    for record in find_dataset_records(records, dataset_name, dict(query)):
        if not needs_upgrade(record):
            counts["current"] += 1
            continue
        counts["datasets"] += 1
        counts["arrays"] += sum(entry.get("chunk_format", 1) < CHUNK_FORMAT for entry in record["schema"])
        if not dry_run:
            _upgrade_record(records, record)
    return counts


def _upgrade_record(records: Records, record: dict) -> None:
    name = record.get("dataset_name")
    for _ in range(APPEND_RETRIES):
        writer = ChunkWriter(records.blobs, desc=f"upgrading {name}")
        old_refs = set(record.get(REFS_FIELD, ()))
        try:
            schema = [_upgraded_entry(writer, records, entry) for entry in record["schema"]]
        except BaseException:
            records.release_chunks(set(writer.refs) - old_refs)
            raise
        refs = list(dict.fromkeys(d for entry in schema for d in entry["chunks"]))
        swapped = records.find_one_and_update(
            COLLECTION, {"_id": record["_id"], "revision": record.get("revision", 1)},
            {"$set": {"schema": schema, REFS_FIELD: refs}, "$inc": {"revision": 1}})
        if swapped is not None:
            records.release_chunks(old_refs - set(refs))  # freed only where no record lists them
            logger.info("upgraded dataset %r (%s) to chunk format %d", name, record["_id"], CHUNK_FORMAT)
            return
        records.release_chunks(set(writer.refs) - old_refs)  # changed meanwhile (an append): read it again
        found = records.find(COLLECTION, {"_id": record["_id"]}, limit=1)
        if not found:
            return  # deleted meanwhile: nothing to upgrade
        record = found[0]
        if not needs_upgrade(record):
            return
    raise ConflictError(f"could not upgrade dataset {name!r}: {APPEND_RETRIES} concurrent updates in a row changed "
                        "it first; it is unchanged, run the upgrade again")


def delete_datasets(records: Records, query: dict[str, Any]) -> int:
    """Delete matching datasets and their blobs (chunks no other record uses); return how many."""
    return records.delete(COLLECTION, run_query(query))


def _append_one(writer: ChunkWriter, records: Records, entry: dict, rows: np.ndarray) -> dict:
    """The schema entry of an array after appending ``rows`` (rewrites only its last, partial chunk)."""
    manifest = Manifest.from_doc(entry)
    if not manifest.shape:
        raise InvalidArgumentError(f"{entry['path']} is a 0-d array and cannot grow")
    rows = np.asarray(rows)
    dtype = manifest.numpy_dtype
    structured = dtype.fields is not None or rows.dtype.fields is not None
    if rows.dtype != dtype and (structured or not np.can_cast(rows.dtype, dtype, "same_kind")):
        raise InvalidArgumentError(f"{entry['path']}: cannot append {rows.dtype} rows to a {dtype} array"
                                   + ("; structured rows must have the same fields" if structured else ""))
    if tuple(rows.shape[1:]) != tuple(manifest.shape[1:]):
        raise InvalidArgumentError(f"{entry['path']}: rows of shape {tuple(rows.shape[1:])} do not fit an array "
                                   f"of shape {tuple(manifest.shape)}; each row must be {tuple(manifest.shape[1:])}")
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, as an error
        converted = rows.astype(dtype, copy=False)
    if converted is not rows and not structured and not np.can_cast(rows.dtype, dtype, "safe"):
        if dtype.kind in "fc":  # rounding to the stored precision is expected; overflow to inf is not
            lossy = bool(np.any(np.isinf(converted) & ~np.isinf(rows)))
        else:
            lossy = dtype.kind in "iubUS" and not np.array_equal(converted, rows)
        if lossy:
            raise InvalidArgumentError(f"{entry['path']}: a {dtype} array cannot hold some of the appended "
                                       f"{rows.dtype} values (they would overflow or be truncated); append values "
                                       "that fit, or save the dataset again with a wider dtype")
    rows = converted
    step, n = manifest.chunk_rows, manifest.shape[0]
    full = n // step
    tail = read_rows(records.blobs, manifest, full * step, n) if n % step else rows[:0]
    grown = np.concatenate([tail, rows]) if len(tail) else rows
    # the array keeps its chunk format; in format 2 the new last chunk is padded (the manifest keeps the true
    # length), so the padded tail it replaces gets a new content address, as an unpadded one did
    new = writer.write_blocks(blocks_of(grown, step, manifest.chunk_format, chunks_before=full),
                              chunk_format=manifest.chunk_format)
    manifest.chunks = manifest.chunks[:full] + new
    manifest.shape = [n + len(rows), *manifest.shape[1:]]
    return {**entry, **manifest.to_doc(), "nbytes": entry["nbytes"] + int(rows.nbytes),
            "checksum": manifest.checksum()}


def append_dataset(records: Records, dataset_name: str, rows: Any, sort: Any = None, **query: Any) -> int:
    """Grow the newest matching dataset along axis 0 by ``rows`` (same structure); return the new length.

    Only new chunks (and a rewrite of each array's last, partial chunk) are written; the record
    is then swapped in one atomic compare-and-set on its ``revision``, so readers see the old or
    the new length, never a torn one, and two concurrent appends both land (one retries).
    """
    flat = flatten(rows)
    for _ in range(APPEND_RETRIES):
        found = find_records(records, dataset_name, dict(query), sort=sort, limit=1)
        if not found:
            raise NotFoundError(f"no dataset {dataset_name!r} matches {query or 'the query'}; save it first")
        record = found[0]
        if dumps_spec(_shape_free(flat.spec)) != dumps_spec(_shape_free(loads_spec(record["spec"]))):
            stored = [s["dtype"] for s in record["schema"]]
            given = [a.dtype.str for a in flat.arrays]
            if dumps_spec(_shape_free(flat.spec, kinds=False)) == dumps_spec(
                    _shape_free(loads_spec(record["spec"]), kinds=False)):  # e.g. int64 rows for a uint8 array
                raise InvalidArgumentError(f"the rows' arrays ({', '.join(map(_dtype_name, given))}) are not of "
                                           f"the kinds of dataset {dataset_name!r} "
                                           f"({', '.join(map(_dtype_name, stored))}); convert them with .astype()")
            raise InvalidArgumentError(f"the rows' structure does not match dataset {dataset_name!r}: append the "
                                       "same containers and keys, with arrays in the same places")
        lengths = [int(a.shape[0]) if a.ndim else None for a in flat.arrays]
        if record.get("rows") is not None and len(set(lengths)) > 1:
            raise InvalidArgumentError(f"the arrays of dataset {dataset_name!r} share their {record['rows']} rows, so "
                                       f"each must grow by the same number of rows; got {lengths} new rows")
        writer = ChunkWriter(records.blobs, desc=f"appending to {dataset_name}")
        try:
            schema = [_append_one(writer, records, entry, a) for entry, a in zip(record["schema"], flat.arrays)]
        except BaseException:
            records.release_chunks(set(writer.refs) - set(record.get(REFS_FIELD, ())))
            raise
        refs = list(dict.fromkeys([*record.get(REFS_FIELD, ()), *writer.refs]))  # old tails stay until delete
        new_spec = _with_shapes(loads_spec(record["spec"]), schema)
        swapped = records.find_one_and_update(
            COLLECTION, {"_id": record["_id"], "revision": record.get("revision", 1)},
            {"$set": {"schema": schema, "spec": dumps_spec(new_spec), REFS_FIELD: refs,
                      "nbytes": sum(s["nbytes"] for s in schema), "rows": _shared_rows(schema)},
             "$inc": {"revision": 1}})
        if swapped is not None:
            grown = [int(s["shape"][0]) for s in schema if s["shape"]]
            return max(grown) if grown else 0
        records.release_chunks(set(writer.refs) - set(record.get(REFS_FIELD, ())))  # lost a race: retry
    raise ConflictError(f"could not append to {dataset_name!r}: {APPEND_RETRIES} concurrent updates in a row "
                        "changed it first; nothing was appended, try again")


def _dtype_name(dtype: str) -> str:
    return str(np.dtype(dtype))


def _shape_free(spec: Any, kinds: bool = True) -> Any:
    """A spec without array shapes' first axis and JSON values: what must match for an append
    (without the arrays' dtype kinds too, unless ``kinds``)."""
    kind = spec["t"]
    if kind in ("array", "scalar"):
        return {"t": kind, "dtype": np.dtype(spec["dtype"]).kind if kinds else None, "shape": spec["shape"][1:]}
    if kind in ("list", "tuple"):
        return {"t": kind, "v": [_shape_free(n, kinds) for n in spec["v"]]}
    if kind == "dict":
        return {"t": "dict", "k": spec["k"], "v": [_shape_free(n, kinds) for n in spec["v"]]}
    return {"t": "value"}


def _with_shapes(spec: Any, schema: list[dict]) -> Any:
    kind = spec["t"]
    if kind in ("array", "scalar"):
        return {**spec, "shape": schema[spec["i"]]["shape"]}
    if kind in ("list", "tuple", "dict"):
        return {**spec, "v": [_with_shapes(n, schema) for n in spec["v"]]}
    return spec


def require_rows(record: dict) -> int:
    """The shared first-axis length of a dataset, or a clear error for streaming and batching."""
    if record.get("rows") is None:
        raise SerializationError(
            f"dataset {record.get('dataset_name')!r} has arrays of different lengths "
            f"{[s['shape'][:1] for s in record['schema']]}; streaming needs arrays that share their first "
            "axis (save each split, e.g. train and test, as its own dataset)")
    return int(record["rows"])
