"""``mongomock://`` backend: mongomock for the index, an in-process dict for blobs.

For fast offline tests (ours and users'). Two deliberate differences from a plain
``mongomock.MongoClient()``:

* Stores are shared per URI within a process: ``TensorHub("mongomock://")`` twice sees one
  store, as two clients of one MongoDB server would. ``mongomock://name`` gives a separate one.
  :func:`reset` forgets them all (test isolation).
* Every operation holds a per-store lock: mongomock is not thread-safe (8 threads claiming
  from one collection made duplicate claims), and task claims must stay atomic.
* A filter holding NaN or a regex is decided by :mod:`tensorhub.query`, as on ``file://``:
  mongomock compares with Python's ``==`` (NaN never equals a stored NaN, which MongoDB
  matches) and runs regexes with ``re``, without the time limit the other backends keep.

GridFS is not used: mongomock's GridFS breaks with pymongo 4.20.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO

from bson.decimal128 import Decimal128
from bson.regex import Regex

from tensorhub._compat import mongomock as mongomock_compat
from tensorhub.backends.base import BlobStore, Document, IndexStore, SortSpec, Stores
from tensorhub.backends.mongo import MongoIndexStore
from tensorhub.documents import normalize_document
from tensorhub.errors import NotFoundError
from tensorhub.query import matches, regex_budget, validate_update
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
    """BSON-normalise the values of an update document (operators are kept as they are)."""
    validate_update(update)  # the same refusals as every backend, before the values are touched
    return {op: normalize_document(fields) if isinstance(fields, Mapping) else fields
            for op, fields in update.items()}


def _mongomock_misreads(value: Any) -> bool:
    """Whether a filter holds something mongomock evaluates unlike MongoDB: NaN or a regex."""
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, Decimal128):
        return value.to_decimal().is_nan()
    if isinstance(value, (re.Pattern, Regex)):
        return True
    if isinstance(value, Mapping):
        return "$regex" in value or any(_mongomock_misreads(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_mongomock_misreads(v) for v in value)
    return False


class MongomockIndexStore(MongoIndexStore):
    """:class:`MongoIndexStore` over mongomock, with every call serialised by the store's lock.

    Values are normalised through BSON on the way in, so types (datetimes to the millisecond,
    tuples as lists) match what a real server returns.
    """

    shared_across_processes = False  # the data lives in this process's memory
    # mongomock records indexes but every query scans; its count does not copy documents (inherited)
    supports_server_side_indexes = False

    def __init__(self, client: Any, lock: threading.RLock, where: str) -> None:
        super().__init__(client, "tensorhub", where)
        self._lock = lock

    def _decided(self, collection: str, filter: Mapping[str, Any]) -> Mapping[str, Any]:
        """``filter``, or where mongomock would misread it, the ``_id``s of what it matches in MongoDB's sense.

        Called under the lock, so the ids stay the matches for the operation that uses them.
        """
        if not _mongomock_misreads(filter):
            return filter
        with regex_budget():
            ids = [d["_id"] for d in super().find(collection, {}) if matches(d, filter)]
        return {"_id": {"$in": ids}}

    def insert_many(self, collection: str, documents: Sequence[Document]) -> None:
        with self._lock:
            super().insert_many(collection, [normalize_document(d) for d in documents])

    def find(self, collection: str, filter: Mapping[str, Any], sort: SortSpec | None = None,
             limit: int | None = None) -> list[Document]:
        with self._lock:
            return super().find(collection, self._decided(collection, filter), sort, limit)

    def update_many(self, collection: str, filter: Mapping[str, Any], update: Mapping[str, Any]) -> int:
        with self._lock:
            return super().update_many(collection, self._decided(collection, filter), _normalize_update(update))

    def find_one_and_update(self, collection: str, filter: Mapping[str, Any], update: Mapping[str, Any],
                            sort: SortSpec | None = None) -> Document | None:
        with self._lock:
            return super().find_one_and_update(collection, self._decided(collection, filter),
                                               _normalize_update(update), sort)

    def delete_many(self, collection: str, filter: Mapping[str, Any]) -> int:
        with self._lock:
            return super().delete_many(collection, self._decided(collection, filter))

    def count(self, collection: str, filter: Mapping[str, Any]) -> int:
        with self._lock:
            return super().count(collection, self._decided(collection, filter))

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
