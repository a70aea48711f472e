"""``mongomock://`` backend: mongomock keeps the documents, :mod:`tensorhub.query` decides every query.

For fast offline tests (ours and users'). Three deliberate differences from a plain
``mongomock.MongoClient()``:

* Stores are shared per URI within a process: ``TensorHub("mongomock://")`` twice sees one
  store, as two clients of one MongoDB server would. ``mongomock://name`` gives a separate one.
  :func:`reset` forgets them all (test isolation).
* Every operation holds a per-store lock: mongomock is not thread-safe (8 threads claiming
  from one collection made duplicate claims), and task claims must stay atomic.
* Every filter, sort and update is decided by :mod:`tensorhub.query`, the evaluator of ``file://``
  and ``s3://``, not by mongomock's own matcher: under the lock, the collection's documents are
  read from mongomock, matched, sorted and updated in Python, and the changed ones written back
  by ``_id``. mongomock departs from MongoDB in many places (``True == 1``, NaN, nested arrays,
  ``$mod``, ``$type`` lists, sorting by arrays, ``$where`` raising ``NotImplementedError``...),
  so a query now means the same here as on the other backends, and fails with the same
  :class:`~tensorhub.errors.InvalidQueryError`. Every query reads the whole collection: this is a
  store for tests, not for data at scale.

GridFS is not used: mongomock's GridFS breaks with pymongo 4.20.
"""

from __future__ import annotations

import copy
import datetime as dt
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO

from bson.regex import Regex

from tensorhub._compat import mongomock as mongomock_compat
from tensorhub.backends.base import BlobStore, Document, IndexStore, SortSpec, Stores
from tensorhub.backends.mongo import MongoIndexStore, translate_errors
from tensorhub.documents import normalize_document
from tensorhub.errors import NotFoundError
from tensorhub.query import apply_update, matches, normalize_sort, regex_budget, sort_documents, validate_filter, \
    validate_update
from tensorhub.redaction import redact_uri

_servers: dict[str, tuple[Any, dict[str, tuple[bytes, dt.datetime]], threading.RLock]] = {}
_servers_lock = threading.Lock()


def reset() -> None:
    """Forget every in-process mongomock store (for test isolation)."""
    with _servers_lock:
        _servers.clear()


def _server(name: str) -> tuple[Any, dict[str, tuple[bytes, dt.datetime]], threading.RLock]:
    with _servers_lock:
        if name not in _servers:
            _servers[name] = (mongomock_compat.new_server(), {}, threading.RLock())
        return _servers[name]


def _normalize_update(update: Mapping[str, Any]) -> dict[str, Any]:
    """BSON-normalise the values of an update document (operators are kept as they are), so the
    updated documents hold what a server would store (datetimes to the millisecond, lists for tuples)."""
    validate_update(update)  # the same refusals as every backend, before the values are touched
    return {op: normalize_document(fields) if isinstance(fields, Mapping) else fields
            for op, fields in update.items()}


def _aware_copy(value: Any) -> Any:
    """A copy of a stored document (or value) whose datetimes are timezone-aware UTC."""
    if isinstance(value, dict):
        return {key: _aware_copy(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_aware_copy(v) for v in value]
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return copy.copy(value) if isinstance(value, Regex) else value  # the other BSON values are immutable


class MongomockIndexStore(MongoIndexStore):
    """Documents in mongomock collections; every query evaluated by :mod:`tensorhub.query` under the store's lock.

    Values are normalised through BSON on the way in, so types (datetimes to the millisecond,
    tuples as lists) match what a real server returns. Inserts, index declarations and the
    error translation are :class:`MongoIndexStore`'s (an insert meeting a duplicate ``_id``
    inserts nothing).
    """

    shared_across_processes = False  # the data lives in this process's memory
    # mongomock records indexes but every query reads the whole collection; count matches the stored
    # documents where they are, copying none
    supports_server_side_indexes = False
    supports_cheap_count = True

    def __init__(self, client: Any, lock: threading.RLock, where: str) -> None:
        super().__init__(client, "tensorhub", where)
        self._lock = lock

    def _stored_matches(self, collection: str, filter: Mapping[str, Any]) -> list[Document]:
        """The stored documents matching ``filter`` (not copies: read them only). Called under the lock."""
        validate_filter(filter)  # a malformed filter fails even on an empty collection
        with translate_errors(self.uri):
            stored = mongomock_compat.stored_documents(self._coll(collection))
        with regex_budget():  # one regex time allowance for the whole scan, as on file://
            return [d for d in stored if matches(d, filter)]

    def _matching(self, collection: str, filter: Mapping[str, Any]) -> list[Document]:
        """Copies of the documents matching ``filter`` in MongoDB's sense, in insertion order. Called
        under the lock, so they stay the matches for the write that follows.

        The stored documents are matched in place (their naive datetimes are UTC to tensorhub.query,
        as to MongoDB); only the matches are copied, with timezone-aware datetimes as a client with
        ``tz_aware=True`` returns them.
        """
        return [_aware_copy(d) for d in self._stored_matches(collection, filter)]

    def _write_back(self, collection: str, documents: Sequence[Document]) -> None:
        with translate_errors(self.uri):
            for document in documents:  # by _id, which an update cannot change (tensorhub.query refuses it)
                self._coll(collection).replace_one({"_id": document["_id"]}, document)

    def insert_many(self, collection: str, documents: Sequence[Document]) -> None:
        with self._lock:
            super().insert_many(collection, [normalize_document(d) for d in documents])

    def find(self, collection: str, filter: Mapping[str, Any], sort: SortSpec | None = None,
             limit: int | None = None) -> list[Document]:
        normalize_sort(sort)  # a malformed sort fails before anything is read
        with self._lock:
            found = sort_documents(self._matching(collection, filter), sort)
        return found[:limit] if limit else found

    def update_many(self, collection: str, filter: Mapping[str, Any], update: Mapping[str, Any]) -> int:
        change = _normalize_update(update)
        with self._lock:
            # every document is updated before any is written: one refused update changes nothing, as on file://
            updated = [apply_update(d, change) for d in self._matching(collection, filter)]
            self._write_back(collection, updated)
        return len(updated)

    def find_one_and_update(self, collection: str, filter: Mapping[str, Any], update: Mapping[str, Any],
                            sort: SortSpec | None = None) -> Document | None:
        change = _normalize_update(update)
        normalize_sort(sort)
        with self._lock:
            found = sort_documents(self._matching(collection, filter), sort)
            if not found:
                return None
            document = apply_update(found[0], change)
            self._write_back(collection, [document])
        return document

    def delete_many(self, collection: str, filter: Mapping[str, Any]) -> int:
        with self._lock:
            ids = [d["_id"] for d in self._stored_matches(collection, filter)]
            with translate_errors(self.uri):
                for document_id in ids:
                    self._coll(collection).delete_one({"_id": document_id})
        return len(ids)

    def count(self, collection: str, filter: Mapping[str, Any]) -> int:
        with self._lock:
            return len(self._stored_matches(collection, filter))

    def count_by(self, collection: str, fields: Sequence[str],
                 filter: Mapping[str, Any] | None = None) -> dict[tuple[Any, ...], int]:
        # the scan of IndexStore (through find: the lock, and MongoDB's reading of the filter)
        return IndexStore.count_by(self, collection, fields, filter)

    def create_index(self, collection: str, keys: SortSpec) -> None:
        with self._lock:
            super().create_index(collection, keys)


class MemoryBlobStore(BlobStore):
    """Blobs in a dict shared by every store opened on the same ``mongomock://`` name.

    Each value is ``(bytes, modified time)``, so garbage collection sees ages as on disk.
    """

    shared_across_processes = False

    def __init__(self, blobs: dict[str, tuple[bytes, dt.datetime]], lock: threading.RLock, where: str) -> None:
        self._blobs = blobs
        self._lock = lock
        self.uri = where

    def put(self, key: str, data: bytes | BinaryIO) -> None:
        value = bytes(data) if isinstance(data, (bytes, bytearray, memoryview)) else data.read()
        with self._lock:
            self._blobs[key] = (value, dt.datetime.now(dt.timezone.utc))

    def get(self, key: str) -> bytes:
        with self._lock:
            try:
                return self._blobs[key][0]
            except KeyError as exc:
                raise NotFoundError(f"blob {key!r} is missing from {self.uri}") from exc

    def exists(self, key: str) -> bool:
        with self._lock:
            return key in self._blobs

    def freshen(self, key: str) -> bool:
        with self._lock:
            if key not in self._blobs:
                return False
            self._blobs[key] = (self._blobs[key][0], dt.datetime.now(dt.timezone.utc))
            return True

    def delete(self, key: str) -> None:
        with self._lock:
            self._blobs.pop(key, None)

    def list(self, prefix: str = "") -> Iterator[str]:
        with self._lock:
            keys = [k for k in self._blobs if k.startswith(prefix)]
        yield from keys

    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, dt.datetime | None]]:
        with self._lock:
            items = [(k, v[1]) for k, v in self._blobs.items() if k.startswith(prefix)]
        yield from items


def open_stores(uri: str, *, index: bool = True, blobs: bool = True) -> Stores:
    """Open ``mongomock://[name]``: the in-process store of that name, created on first use."""
    name = uri.split("://", 1)[1].strip("/")
    server, blob_dict, lock = _server(name)
    where = redact_uri(f"mongomock://{name}")
    return Stores(
        index=MongomockIndexStore(mongomock_compat.client_on(server, tz_aware=True), lock, where) if index else None,
        blobs=MemoryBlobStore(blob_dict, lock, where) if blobs else None,
    )
