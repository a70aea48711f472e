"""The model records: save, load, lineage and comparison (the repository layer of the ``models`` kind)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from tensorhub.arrays import checksum
from tensorhub.chunks import ChunkWriter
from tensorhub.errors import ConfigurationError, InvalidArgumentError, InvalidArgumentTypeError, NotFoundError
from tensorhub.models._arrays import ModelReader, write_arrays
from tensorhub.models._registry import adapter_fields, adapter_for, adapter_named
from tensorhub.models._torch import check_into
from tensorhub.models._trust import check_trusted
from tensorhub.records import COMMON_INTERNAL_FIELDS, Records, as_object_id

log = logging.getLogger("tensorhub.models")  # the package's logger, as before the split into modules

COLLECTION = "models"
#: lineage fields: the dataset a model was trained on and the task that trained it
LINEAGE = {"dataset": ("dataset_id", "datasets"), "task": ("task_id", "tasks")}
#: fields save_model writes itself whatever the adapter; each adapter declares its own
#: (:attr:`~tensorhub.models.ModelAdapter.record_fields`), see :func:`internal_fields`
MODEL_FIELDS = frozenset({"model_name", "adapter", "format", "arrays", "blob_sha256", "dataset_id", "task_id",
                          "attempt", "checkpoint_step"})
#: the indexes of this kind's collection (declared by the hub when it opens a store)
INDEXES = {COLLECTION: [[("project_name", 1), ("model_name", 1), ("time", -1), ("_id", -1)],
                        # a run's newest checkpoint (tensorhub.checkpoints.latest_checkpoint)
                        [("project_name", 1), ("task_id", 1), ("checkpoint_step", -1), ("_id", -1)]]}


def internal_fields() -> frozenset[str]:
    """Every field a model record owns: the common ones, :data:`MODEL_FIELDS` and the fields of every
    adapter registered now (so one registered later with ``register_model_adapter`` counts);
    every other field is the user's (tags and metrics)."""
    return COMMON_INTERNAL_FIELDS | MODEL_FIELDS | adapter_fields()


def __getattr__(name: str) -> Any:
    if name == "INTERNAL_FIELDS":  # the list as it is now: adapters can be registered at any time
        return internal_fields()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: the attribute naming the ``_<field>`` attributes :func:`attach_record` set on a model
ATTACHED = "_tensorhub_attached"


def attach_record(model: Any, record: dict) -> Any:
    """Expose ``record`` on ``model`` as ``tensorhub_record`` and as ``_<field>`` attributes.

    A field whose ``_<field>`` name the object already uses (e.g. torch's ``_parameters``)
    is left out, so the model keeps working; it is still in ``tensorhub_record``.
    """
    # a module loaded into again (into=): the attributes an earlier record set are replaced, not kept stale
    ours: frozenset[str] = getattr(model, ATTACHED, frozenset())
    try:
        model.tensorhub_record = record
    except AttributeError:
        return model
    for attr in ours - {f"_{key}" for key in record}:
        delattr(model, attr)
    attached: set[str] = set()
    for key, value in record.items():
        attr = f"_{key}"
        if attr in ours or not hasattr(model, attr):
            setattr(model, attr, value)
            attached.add(attr)
    setattr(model, ATTACHED, frozenset(attached))
    return model


def lineage(records: Records, dataset: Any = None, task: Any = None) -> dict[str, Any]:
    """``dataset_id``/``task_id`` fields from records or ids (inside a run, the run's by default: stamped).

    An explicit reference must name an existing record (of any project), so a typo fails at
    save time instead of leaving a model whose lineage leads nowhere.
    """
    fields: dict[str, Any] = {}
    for kind, value in (("dataset", dataset), ("task", task)):
        if value is None:
            continue
        key, collection = LINEAGE[kind]
        try:
            oid = as_object_id(value)
        except InvalidArgumentError as exc:
            raise type(exc)(
                f"{kind}= must be a {kind} record or its id (ObjectId or 24-hex string), got {value!r}; to tag "
                f"a model with a name, use another field, e.g. {kind}_name=...") from None
        if not records.exists_in_any_project(collection, oid):
            raise NotFoundError(f"no {kind} has the id {oid}; pass the record returned by find_{kind}_records/"
                                f"find_tasks, or the id save_{kind}/create_{kind} returned")
        fields[key] = oid
    # inside a run (a task attempt or an interactive run), Records.new_record stamps its task_id and attempt
    return fields


def lineage_query(query: dict[str, Any]) -> dict[str, Any]:
    """A model query where ``dataset=``/``task=`` mean ``dataset_id``/``task_id`` and ids may be records or hex."""
    for kind, (key, _) in LINEAGE.items():
        if kind in query:
            if key in query:
                raise InvalidArgumentError(f"pass {kind}= or {key}=, not both")
            query[key] = query.pop(kind)
        value = query.get(key)
        if isinstance(value, str) or (isinstance(value, Mapping) and "_id" in value):
            query[key] = as_object_id(value)
    return query


def save_model(records: Records, network: Any, model_name: str, allow_pickle: bool = False,
               example_inputs: Any = None, dynamic_shapes: Any = None, dataset: Any = None, task: Any = None,
               own: Mapping[str, Any] | None = None, **fields: Any) -> Any:
    """Store ``network`` through its adapter; return the record id.

    The record holds the user's ``fields``, ``model_name``, the adapter and its format, the
    adapter's fields, lineage (``dataset_id``/``task_id``) and the manifests of its arrays;
    the arrays' chunks are written first and listed in ``blob_refs``. ``own``: repository-owned
    fields a caller of this layer sets (a checkpoint's run, attempt and step; never a user's).
    """
    if not isinstance(model_name, str) or not model_name:
        error = InvalidArgumentError if isinstance(model_name, str) else InvalidArgumentTypeError
        raise error(f"model_name must be a non-empty string, got {model_name!r}")
    dataset = fields.pop("dataset_id", None) if dataset is None else dataset
    task = fields.pop("task_id", None) if task is None else task
    records.new_record(fields, internal_fields(), "model")  # refuses internal fields before the adapter's work
    adapter = adapter_for(network)
    options = {"allow_pickle": allow_pickle}
    if example_inputs is not None:
        options["example_inputs"] = example_inputs
    if dynamic_shapes is not None:
        options["dynamic_shapes"] = dynamic_shapes
    saved = adapter.save(network, **options)
    # the fields the adapter wrote, declared or not: a user's tag of that name would be replaced silently
    owned = internal_fields() | frozenset(saved.fields)
    record = records.new_record(fields, owned, "model", {  # validates every field before any write
        **saved.fields,
        **lineage(records, dataset, task),
        **(own or {}),
        "model_name": model_name,
        "adapter": adapter.name,
        "blob_sha256": {name.replace(".", "_"): checksum(data) for name, data in saved.blobs},
    })
    writer = ChunkWriter(records.blobs, desc=f"saving {model_name}")
    try:
        record["arrays"] = write_arrays(writer, saved.arrays)
    except BaseException:
        records.release_chunks(writer.refs)
        raise
    return records.save(COLLECTION, record, saved.blobs, refs=writer.refs)


def find_all_models(records: Records, model_name: str | None = None, sort: Any = None, limit: int | None = None,
                    allow_pickle: bool = False, into: Any = None, trusted: Any = None, **query: Any) -> list:
    """Every matching model, loaded (newest first unless ``sort``); see :meth:`TensorHub.find_all_models`."""
    options = check_load_options({"allow_pickle": allow_pickle, "into": into, "trusted": trusted})
    if model_name is not None:
        if not isinstance(model_name, str) or not model_name:
            error = InvalidArgumentError if isinstance(model_name, str) else InvalidArgumentTypeError
            raise error(f"model_name must be a non-empty string, got {model_name!r}")
        query["model_name"] = model_name
    found = records.find(COLLECTION, lineage_query(query), sort=sort, limit=limit)
    return [load_model(records, record, **options) for record in found]


def delete_models(records: Records, query: dict[str, Any]) -> int:
    """Delete matching models, then free the chunks no other record uses; return how many were deleted."""
    return records.delete(COLLECTION, lineage_query(query))


def check_load_options(options: dict[str, Any]) -> dict[str, Any]:
    """The load options checked once, before any record is read: ``into=`` and ``trusted=`` (normalised).

    ``trusted`` decides what a record may make this process import: see :mod:`tensorhub.models._trust`.
    """
    checked = dict(options)
    check_into(checked.get("into"))
    checked["trusted"] = check_trusted(checked.get("trusted"))
    return checked


def load_model(records: Records, record: dict, **options: Any) -> Any:
    """Rebuild the model of ``record`` with the adapter that saved it, and attach the record.

    Nothing named by the record is imported or called unless ``options["trusted"]`` allows it
    (a shared store is hostile input).
    """
    model = adapter_named(record["adapter"]).load(record, ModelReader(records.blobs, record), **options)
    return attach_record(model, record)


def _get(record: Mapping[str, Any], key: str) -> Any:
    value: Any = record
    for part in key.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def metric_fields(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The user's numeric fields across ``records`` (first seen first): what a comparison shows."""
    keys: dict[str, None] = {}
    internal = internal_fields()
    for record in records:
        for key, value in record.items():
            if key not in internal and isinstance(value, (int, float)) and not isinstance(value, bool):
                keys.setdefault(key)
    return list(keys)


def compare_models(records: Records, model_name: str | None = None, keys: Sequence[str] | str | None = None,
                   sort: Any = None, as_frame: bool = False, limit: int | None = None, **query: Any) -> Any:
    """One row per matching model: ``model_name``, ``time``, ``id``, ``adapter`` and its metrics.

    ``keys`` picks the columns (dotted paths reach into sub-documents); by default every numeric
    field the user saved. Sorted by ``sort``, else by the first of ``keys`` descending (models
    without it last), else newest first. Reads records only, never parameters.
    """
    if isinstance(keys, str):
        keys = [keys]
    if keys is not None and (not all(isinstance(k, str) and k for k in keys)):
        error = InvalidArgumentError if all(isinstance(k, str) for k in keys) else InvalidArgumentTypeError
        raise error(f"keys must be field names, got {keys!r}")
    query = lineage_query(query)
    if model_name is not None:
        query["model_name"] = model_name
    if sort is None and keys:
        sort = [(keys[0], -1)]
    found = records.find(COLLECTION, query, sort=sort, limit=limit)
    columns = list(keys) if keys is not None else metric_fields(found)
    rows = [{"model_name": r.get("model_name"), "time": r.get("time"), "id": r["_id"], "adapter": r.get("adapter"),
             **{k: _get(r, k) for k in columns}} for r in found]
    if not as_frame:
        return rows
    try:
        import pandas
    except ImportError as exc:
        raise ConfigurationError("as_frame=True needs pandas (pip install pandas); without it, compare_models "
                                 "returns a list of dicts") from exc
    return pandas.DataFrame(rows, columns=["model_name", "time", "id", "adapter", *columns])
