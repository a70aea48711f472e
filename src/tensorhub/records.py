"""The repository core: project scoping, record stamping, blob-then-record saves, deletes with blobs.

Every record kind (datasets, models, logs, tasks) stores through :class:`Records`, which holds
the invariants in one place:

* every record has ``_id``, ``project_name`` and ``time`` (UTC, timezone-aware), and every
  read and write is scoped to the project: :class:`Records` (or a :class:`Collection` view of
  it) is the only way the layers above reach the index, which it keeps private;
* a save writes its blobs first and the record last, and removes the blobs again if anything
  fails, so a record is visible only once its bytes are complete and a failed save leaves
  nothing behind;
* a delete removes the records first and their blobs after, so no visible record ever points
  at missing bytes; shared content-addressed chunks are freed only when no record uses them;
* every field the repository owns is refused from users, from one declared list per kind
  (:data:`COMMON_INTERNAL_FIELDS` plus the kind's ``INTERNAL_FIELDS``, checked in
  :meth:`Records.new_record`), and nothing a delete or a load touches is taken from a stored
  field: a record's blobs are under :func:`blob_prefix` (its collection and ``_id``), its
  chunks are only ever ``chunks/<digest>`` keys of well-formed digests.

It knows nothing of any backend: only the :class:`IndexStore` and :class:`BlobStore` ABCs.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import functools
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from bson import ObjectId

from tensorhub.backends.base import BlobStore, Document, IndexStore
from tensorhub.deferred import unwrap
from tensorhub.documents import normalize_document, plain_numbers
from tensorhub.errors import InvalidArgumentError, InvalidArgumentTypeError, InvalidQueryError
from tensorhub.query import normalize_sort, validate_filter
from tensorhub.stamping import RUN_FIELDS, STAMPED_KINDS, current_stamp

log = logging.getLogger(__name__)

#: newest first, with the ObjectId breaking ties between records of the same millisecond
NEWEST_FIRST = [("time", -1), ("_id", -1)]
#: set on records that have blobs of their own; only a "has blobs" flag for deletes: where the blobs
#: are is always computed (:func:`blob_prefix`), never read from a record (a user could have written it)
BLOB_PREFIX_FIELD = "blob_prefix"
#: field listing the content-addressed chunks (see :mod:`tensorhub.chunks`) a record uses
REFS_FIELD = "blob_refs"
#: collections whose records may hold ``blob_refs`` or blobs of their own; a chunk is garbage when none refers to it
REF_COLLECTIONS = ("datasets", "models")
#: fields the repository owns on a record of every kind; each kind adds its own ``INTERNAL_FIELDS``
#: (``project_name`` is accepted when it is the hub's own: it changes nothing)
COMMON_INTERNAL_FIELDS = frozenset({"_id", "project_name", "time", BLOB_PREFIX_FIELD, REFS_FIELD})
#: what a chunk name in ``blob_refs`` must look like (a BLAKE3 hex digest, :func:`tensorhub.chunks.digest`)
_DIGEST = re.compile(r"[0-9a-f]{64}")


#: ``new_record``'s default ``stamp``: look the current run up
_LOOKUP = object()


@functools.lru_cache(maxsize=64)
def _owned(internal: frozenset[str], stamped: bool) -> frozenset[str]:
    """Every field a record of a kind owns (computed once per kind, not per record)."""
    return COMMON_INTERNAL_FIELDS | internal | (RUN_FIELDS if stamped else frozenset())


#: set only by :func:`keeping_time` (importers and copies): a ``time`` field in a new record's fields is its
#: original save time, kept, instead of a refused user field
_keep_time: contextvars.ContextVar[bool] = contextvars.ContextVar("tensorhub_keep_time", default=False)


@contextlib.contextmanager
def keeping_time() -> Iterator[None]:
    """Within this block, records made by :meth:`Records.new_record` keep a ``time`` given in their
    fields (a ``datetime``; naive is UTC) instead of the save time.

    Internal: for importers and copies, which bring records that already have a save time (log
    rows included, through the public ``save_*`` calls); users' ``time`` stays refused elsewhere.
    """
    token = _keep_time.set(True)
    try:
        yield
    finally:
        _keep_time.reset(token)


def _kept_time(value: Any) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise InvalidArgumentTypeError(f"a kept 'time' must be a datetime, got {type(value).__name__}")
    when = value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)
    return when.replace(microsecond=when.microsecond // 1000 * 1000)


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC, truncated to BSON's millisecond precision."""
    now = dt.datetime.now(dt.timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def blob_prefix(collection: str, record_id: Any) -> str:
    """Where the blobs of record ``record_id`` of ``collection`` live: ``<collection>/<id>/``.

    Computed, never read from a record: a stored ``blob_prefix`` field could name another
    record's blobs, or all chunks.
    """
    if not isinstance(record_id, ObjectId):
        raise InvalidArgumentTypeError(f"records of tensorhub have ObjectId ids, got {record_id!r}")
    return f"{collection}/{record_id}/"


def chunk_digests(record: Mapping[str, Any]) -> list[str]:
    """The chunk digests a record lists in ``blob_refs``, keeping only well-formed ones.

    A hand-written record could list any key there; only names of the digest form are ever
    turned into ``chunks/<digest>`` keys, so a delete can free nothing but unused chunks.
    """
    refs = record.get(REFS_FIELD) or ()
    if not isinstance(refs, (list, tuple)):
        refs = ()
    good = [d for d in refs if isinstance(d, str) and _DIGEST.fullmatch(d)]
    if len(good) != len(refs):
        log.warning("record %s lists %d malformed chunk name(s) in %s; they are ignored",
                    record.get("_id"), len(refs) - len(good), REFS_FIELD)
    return good


def as_object_id(value: Any) -> ObjectId:
    """An ``ObjectId`` from an id, its hex string, or a record that has an ``_id``."""
    if isinstance(value, Mapping):
        value = value.get("_id")
    if isinstance(value, ObjectId):
        return value
    if isinstance(value, str) and ObjectId.is_valid(value):
        return ObjectId(value)
    error = InvalidArgumentError if isinstance(value, str) else InvalidArgumentTypeError
    raise error(f"expected a record id (ObjectId or its 24-hex string) or a record, got {value!r}")


class Records:
    """Scoped, blob-aware access to one project's records in an index store and a blob store.

    The only way the layers above (datasets, models, logs, tasks, the runner, the hub) touch the
    index: every read and write here ANDs the project into its filter (:meth:`scope`), every
    insert must carry the project (records come from :meth:`new_record`), and no update may
    change a record's ``_id`` or ``project_name``. :meth:`collection` gives the same operations
    bound to one collection. The raw index is private (``_index``); the few operations that
    legitimately cross projects are named so and say why in their docstrings:
    :meth:`create_index`, :meth:`exists_in_any_project`, :meth:`release_chunks`,
    :meth:`collect_garbage` (chunks are shared store-wide), :meth:`count_every_project` (the
    projects of a store and their record counts; a worker telling a wrong project from an empty queue), :meth:`for_project`
    (a copy moves every project of a store), and :meth:`store_index` (the hub's ``index``
    property, for users and tests).
    """

    def __init__(self, index: IndexStore, blobs: BlobStore, project_name: str) -> None:
        self._index = index
        self.blobs = blobs
        self.project_name = project_name

    def collection(self, name: str) -> Collection:
        """This project's records of collection ``name``: a :class:`Collection` view."""
        return Collection(self, name)

    def scope(self, query: Mapping[str, Any] | None = None) -> Document:
        """``query`` restricted to this project (keys are validated as a MongoDB filter's)."""
        for key in query or {}:
            if not isinstance(key, str):
                raise InvalidQueryError(f"query keys must be strings, got {key!r}")
        scoped: Document = dict(plain_numbers(dict(query or {})))  # np.int64(3) means 3 on every backend
        validate_filter(scoped)
        if "project_name" in scoped and scoped["project_name"] != self.project_name:
            return {"$and": [scoped, {"project_name": self.project_name}]}
        scoped["project_name"] = self.project_name
        return scoped

    # ------------------------------------------------------------------ store-wide, by design
    def store_index(self) -> IndexStore:
        """The raw index, unscoped: only for ``TensorHub.index`` (users' and tests' direct door to the
        store). The repository layer never uses it: it goes through the scoped methods."""
        return unwrap(self._index)  # the backend's own store, also before a new store's first write

    @property
    def store_key(self) -> str:
        """What tells this store from another in this process (its index's URI, redacted): an
        interactive run stamps only what is saved to the store it was started on."""
        return self._index.uri

    @property
    def shared_across_processes(self) -> bool:
        """Whether another process opening the same URI sees these stores (not ``mongomock://``)."""
        return self._index.shared_across_processes and self.blobs.shared_across_processes

    def change_token(self) -> Any:
        """The index store's :meth:`~tensorhub.backends.base.IndexStore.change_token`. Store-wide by
        nature (a write to any project changes it): only a hint that lets pollers skip a look."""
        return self._index.change_token()

    def create_index(self, collection: str, keys: Sequence[tuple[str, int]]) -> None:
        """Declare an index on ``collection``. Store-wide by nature: one index serves every project
        (each kind's indexes start with ``project_name``)."""
        self._index.create_index(collection, list(keys))

    def exists_in_any_project(self, collection: str, record_id: ObjectId) -> bool:
        """Whether a record with this ``_id`` exists in ``collection``, in any project.

        Unscoped on purpose: a model's lineage may name a dataset or task of another project
        (``save_model(dataset=...)``); only existence is read, never the record.
        """
        return bool(self._index.find(collection, {"_id": record_id}, limit=1))

    def count_every_project(self, collection: str, by: Sequence[str] = (),
                            query: Mapping[str, Any] | None = None) -> dict[tuple[Any, ...], int]:
        """How many records of ``collection`` (matching ``query``) each project holds, per value of each
        field of ``by``: ``{(project_name, *values): count}``.

        Store-wide on purpose: listing the projects of a store (``TensorHub.list_projects``, ``tensorhub
        ls projects``) must see every project, and an idle worker logs how many pending tasks of its
        name exist in other projects, so a wrong ``--project`` shows. Only counts leave here, never a record.
        """
        if query:
            validate_filter(dict(query))
        return self._index.count_by(collection, ["project_name", *by], dict(query or {}))

    def for_project(self, project_name: str) -> Records:
        """The same stores scoped to another project.

        Store-wide on purpose: copying a store (:mod:`tensorhub.copying`) reads and writes each of
        its projects, keeping every record's ``project_name``; each view is still scoped to one project.
        """
        return Records(self._index, self.blobs, project_name)

    def close(self) -> None:
        """Close both stores."""
        self._index.close()
        self.blobs.close()

    def run_stamp(self) -> dict[str, Any] | None:
        """``{"task_id", "attempt"}`` of the run records saved now to this store belong to, or None
        (a batch looks it up once and passes it to :meth:`new_record`)."""
        return current_stamp(self.store_key)

    def new_record(self, fields: Mapping[str, Any], internal: Iterable[str], kind: str,
                   own: Mapping[str, Any] | None = None, stamp: Any = _LOOKUP) -> Document:
        """A record with ``_id``, ``project_name`` and ``time`` set, plus the user's ``fields`` and
        the kind's ``own`` fields, BSON-normalised.

        ``internal`` is the kind's declared list of fields it owns (its ``INTERNAL_FIELDS``): a
        user field of one of those names, or of :data:`COMMON_INTERNAL_FIELDS`, is refused here,
        in one place for every kind. Raises :class:`~tensorhub.errors.SerializationError` before
        anything is written when a field cannot be stored.

        Records of the kinds a run stamps (:data:`~tensorhub.stamping.STAMPED_KINDS`: logs,
        models, datasets) saved inside a run (a task attempt or an interactive run) get its
        ``task_id`` and ``attempt`` here, unless ``own`` sets ``task_id`` (a model's explicit
        ``task=`` lineage, a run's buffered rows); users may not set them. No store round trip;
        ``stamp`` is :meth:`run_stamp`'s answer when the caller looked it up once for a batch.
        """
        for key in fields:
            if not isinstance(key, str) or key.startswith("$"):
                error = InvalidArgumentError if isinstance(key, str) else InvalidArgumentTypeError
                raise error(f"record field names must be plain strings not starting with '$', got {key!r}")
        kept = None
        if "time" in fields and _keep_time.get():  # an importer's or a copy's original save time
            kept = _kept_time(fields["time"])
            fields = {key: value for key, value in fields.items() if key != "time"}
        if "time" in fields or fields.get("project_name", self.project_name) != self.project_name:
            clash = "time" if "time" in fields else "project_name"
            raise InvalidArgumentError(
                f"field {clash!r} is stamped by tensorhub on every record (the hub's project_name, the UTC save "
                f"time); store your value under another name, e.g. {clash}_tag, or open a TensorHub on that project")
        stamped = kind in STAMPED_KINDS
        self.refuse_internal({k: v for k, v in fields.items() if k != "project_name"},
                             _owned(frozenset(internal), stamped), kind)
        record = {"_id": ObjectId(), "project_name": self.project_name, "time": kept or utcnow()}
        record.update(fields)
        if own:
            record.update(own)
        if stamped and "task_id" not in record:
            if stamp is _LOOKUP:
                stamp = self.run_stamp()
            if stamp is not None:
                record.update(stamp)
        return normalize_document(record)

    @staticmethod
    def refuse_internal(fields: Mapping[str, Any], internal: Iterable[str], kind: str) -> None:
        """Refuse user fields that a record kind writes itself (they would be silently replaced)."""
        clash = sorted(set(internal) & set(fields))
        if clash:
            raise InvalidArgumentError(f"field(s) {clash} are written by tensorhub itself in a {kind} record; "
                                       "rename them (e.g. with a prefix such as user_)")

    def blob_prefix(self, collection: str, record_id: ObjectId) -> str:
        """See :func:`blob_prefix`."""
        return blob_prefix(collection, record_id)

    def save(self, collection: str, record: Document, blobs: Iterable[tuple[str, Any]] = (),
             refs: Sequence[str] = ()) -> ObjectId:
        """Write ``blobs`` (name, bytes-or-stream) under the record's prefix, then the record.

        ``refs`` are the chunks (already written) the record uses. If anything fails, the blobs
        already written and the chunks no other record uses are removed, and the error propagates.
        """
        if refs:
            record[REFS_FIELD] = list(refs)
        prefix = self.blob_prefix(collection, record["_id"])
        written: list[str] = []
        try:
            for name, data in blobs:
                key = prefix + name
                self.blobs.put(key, data)
                written.append(key)
            if written:
                record[BLOB_PREFIX_FIELD] = prefix
            self._check_insert(record)
            self._index.insert_one(collection, record)
        except BaseException:
            self._remove_blobs(written)
            self.release_chunks(refs)
            raise
        return record["_id"]

    def release_chunks(self, digests: Iterable[str]) -> int:
        """Delete the chunks among ``digests`` that no record (of any project) refers to any more.

        A save that is writing the same chunk at this very moment, before its record exists,
        can lose it: the window is the few milliseconds between this check and the delete.
        """
        from tensorhub.chunks import chunk_key

        candidates = set(digests)
        if not candidates:
            return 0
        for collection in REF_COLLECTIONS:
            # every project: chunks are shared store-wide, so a chunk another project lists stays
            for record in self._index.find(collection, {REFS_FIELD: {"$in": sorted(candidates)}}):
                candidates.difference_update(record.get(REFS_FIELD) or ())
        self._remove_blobs(chunk_key(d) for d in candidates if isinstance(d, str) and _DIGEST.fullmatch(d))
        return len(candidates)

    def collect_garbage(self, older_than: dt.timedelta, dry_run: bool = False) -> dict[str, int]:
        """Delete blobs no record refers to, written (or reused) more than ``older_than`` ago.

        What a crashed save leaves behind: chunks no record lists in ``blob_refs`` (of any
        project: chunks are shared store-wide), and ``<collection>/<id>/`` blobs whose record
        does not exist. Younger blobs are kept, since a save still running has written its
        chunks but not yet its record; a save that reuses a stored chunk freshens it
        (:meth:`BlobStore.freshen`), so ``older_than`` must exceed :data:`FRESH_FOR` plus the
        longest save. Blobs whose age the backend cannot tell are kept unless ``older_than``
        is zero. What killed writes left inside the backend (temp files, pieces of uploads:
        :meth:`BlobStore.sweep_incomplete`) goes too, by the same age. Returns counts:
        ``chunks``, ``record_blobs`` and ``incomplete`` (leftovers of killed writes) deleted (or
        that would be, with ``dry_run``), and ``kept_young``. The blob store's owner marker
        (:mod:`tensorhub.ownership`) is never garbage.
        """
        from tensorhub.chunks import CHUNK_PREFIX
        from tensorhub.ownership import OWNER_KEY

        cutoff = dt.datetime.now(dt.timezone.utc) - older_than  # not utcnow(): no truncation to the ms
        listing = list(self.blobs.list_modified(""))  # before reading records: one saved meanwhile is seen
        referenced: set[str] = set()
        for collection in REF_COLLECTIONS:
            for record in self._index.find(collection, {REFS_FIELD: {"$exists": True}}):  # every project
                referenced.update(record.get(REFS_FIELD, ()))
        doomed, young = [], 0
        by_record: dict[tuple[str, str], list[str]] = {}
        for key, modified in listing:
            if key == OWNER_KEY:
                continue
            if (modified is None and older_than > dt.timedelta(0)) or (modified is not None and modified > cutoff):
                young += 1
            elif key.startswith(CHUNK_PREFIX):
                if key[len(CHUNK_PREFIX):] not in referenced:
                    doomed.append(key)
            else:
                parts = key.split("/", 2)
                if len(parts) == 3 and ObjectId.is_valid(parts[1]):  # only our own <collection>/<id>/ layout
                    by_record.setdefault((parts[0], parts[1]), []).append(key)
        chunks, record_blobs = len(doomed), 0
        for collection in {c for c, _ in by_record}:
            ids = [ObjectId(i) for c, i in by_record if c == collection]
            alive = {str(r["_id"]) for r in self._index.find(collection, {"_id": {"$in": ids}})}
            for (c, i), keys in by_record.items():
                if c == collection and i not in alive:
                    doomed += keys
                    record_blobs += len(keys)
        if not dry_run:
            for key in doomed:
                self.blobs.delete(key)
        incomplete = self.blobs.sweep_incomplete(older_than, dry_run=dry_run)
        log.info("garbage collection of %s: %d chunks, %d record blobs and %d leftovers of killed writes %s, "
                 "%d younger than %s kept", self.blobs.uri, chunks, record_blobs, incomplete,
                 "found" if dry_run else "deleted", young, older_than)
        return {"chunks": chunks, "record_blobs": record_blobs, "incomplete": incomplete, "kept_young": young}

    def _remove_blobs(self, keys: Iterable[str]) -> None:
        for key in keys:
            try:
                self.blobs.delete(key)
            except Exception:  # best effort: the original error matters more
                log.warning("could not remove blob %s after a failed save", key, exc_info=True)

    # ------------------------------------------------------------------ scoped: this project only
    def find(
        self, collection: str, query: Mapping[str, Any] | None = None, sort: Any = None, limit: int | None = None
    ) -> list[Document]:
        """Matching records of this project, newest first unless ``sort`` says otherwise."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            wrong_type = isinstance(limit, bool) or not isinstance(limit, int)
            raise (InvalidArgumentTypeError if wrong_type else InvalidArgumentError)(
                f"limit must be a non-negative int, got {limit!r}")
        order = normalize_sort(sort) or NEWEST_FIRST
        if all(field != "_id" for field, _ in order):
            # ties (same millisecond) break by insertion order, in the direction asked for time
            order.append(("_id", dict(order).get("time", -1)))
        return self._index.find(collection, self.scope(query), sort=order, limit=limit or None)

    def find_one(self, collection: str, query: Mapping[str, Any] | None = None, sort: Any = None) -> Document | None:
        """The first matching record of this project (newest unless ``sort``), or None."""
        found = self.find(collection, query, sort=sort, limit=1)
        return found[0] if found else None

    def count(self, collection: str, query: Mapping[str, Any] | None = None) -> int:
        """How many records of this project match."""
        return self._index.count(collection, self.scope(query))

    def insert_many(self, collection: str, documents: Sequence[Document]) -> None:
        """Insert records made by :meth:`new_record` (of this project), all in one write."""
        for document in documents:
            self._check_insert(document)
        self._index.insert_many(collection, documents)

    def update_many(self, collection: str, query: Mapping[str, Any], update: Mapping[str, Any]) -> int:
        """Apply ``update`` to this project's matching records; return how many matched."""
        return self._index.update_many(collection, self.scope(query), self._checked_update(update))

    def find_one_and_update(self, collection: str, query: Mapping[str, Any], update: Mapping[str, Any],
                            sort: Any = None) -> Document | None:
        """Atomically update the first of this project's matching records; return it after the
        update, or None when nothing matched."""
        return self._index.find_one_and_update(collection, self.scope(query), self._checked_update(update),
                                               sort=sort)

    def delete(self, collection: str, query: Mapping[str, Any] | None = None) -> int:
        """Delete matching records of this project, then their blobs; return the number deleted."""
        if collection not in REF_COLLECTIONS:  # logs and tasks never have blobs or chunks: a field saying so is a lie
            return self._index.delete_many(collection, self.scope(query))  # one statement, nothing read first
        records = self._index.find(collection, self.scope(query))
        if not records:
            return 0
        deleted = self._index.delete_many(collection, self.scope({"_id": {"$in": [r["_id"] for r in records]}}))
        for record in records:
            # the stored field only says "this record has blobs"; where they are is computed from its own id
            if record.get(BLOB_PREFIX_FIELD) and isinstance(record["_id"], ObjectId):
                self.blobs.delete_prefix(blob_prefix(collection, record["_id"]))
        self.release_chunks(d for record in records for d in chunk_digests(record))
        return deleted

    def _check_insert(self, document: Mapping[str, Any]) -> None:
        """A record to insert must be of this project and have an ``_id`` (made by :meth:`new_record`)."""
        if document.get("project_name") != self.project_name or "_id" not in document:
            raise InvalidArgumentError(f"records of project {self.project_name!r} are made by Records.new_record; "
                                       f"got one of project {document.get('project_name')!r}")

    @staticmethod
    def _checked_update(update: Mapping[str, Any]) -> Mapping[str, Any]:
        """Refuse an update that would change a record's identity or move it to another project."""
        for operator, fields in update.items():
            paths = fields if isinstance(fields, Mapping) else {}
            for path in paths:
                if str(path).split(".", 1)[0] in ("_id", "project_name"):
                    raise InvalidArgumentError(f"an update may not change {path!r} ({operator}): records keep "
                                               "their id and project")
        return update


class Collection:
    """One collection of one project (from :meth:`Records.collection`): the scoped operations of
    :class:`Records` with the collection bound, so a record kind names its collection once."""

    def __init__(self, records: Records, name: str) -> None:
        self.records, self.name = records, name

    def find(self, query: Mapping[str, Any] | None = None, sort: Any = None,
             limit: int | None = None) -> list[Document]:
        """See :meth:`Records.find`."""
        return self.records.find(self.name, query, sort=sort, limit=limit)

    def find_one(self, query: Mapping[str, Any] | None = None, sort: Any = None) -> Document | None:
        """See :meth:`Records.find_one`."""
        return self.records.find_one(self.name, query, sort=sort)

    def count(self, query: Mapping[str, Any] | None = None) -> int:
        """See :meth:`Records.count`."""
        return self.records.count(self.name, query)

    def insert(self, documents: Sequence[Document]) -> None:
        """See :meth:`Records.insert_many`."""
        self.records.insert_many(self.name, documents)

    def update_many(self, query: Mapping[str, Any], update: Mapping[str, Any]) -> int:
        """See :meth:`Records.update_many`."""
        return self.records.update_many(self.name, query, update)

    def find_one_and_update(self, query: Mapping[str, Any], update: Mapping[str, Any],
                            sort: Any = None) -> Document | None:
        """See :meth:`Records.find_one_and_update`."""
        return self.records.find_one_and_update(self.name, query, update, sort=sort)

    def delete(self, query: Mapping[str, Any] | None = None) -> int:
        """See :meth:`Records.delete`."""
        return self.records.delete(self.name, query)
