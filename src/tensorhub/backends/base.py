"""The two storage interfaces every backend implements.

An :class:`IndexStore` keeps small documents (records: tags, metrics, references) in named
collections and answers MongoDB queries over them. A :class:`BlobStore` keeps large byte
strings under ``/``-separated keys. The repository layer (datasets, models, logs, tasks) is
written once against these two ABCs and never looks at which implementation it has.

Both ABCs are small on purpose: a handful of abstract primitives, and derived operations
implemented here once. ``abc.ABC`` enforces them: a backend that forgets a primitive cannot
be instantiated. Optional abilities are declared as class attributes (``supports_*``, as
zarr's ``Store.supports_writes``) that callers read instead of probing for methods.
"""

from __future__ import annotations

import datetime as dt
import io
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

Document = dict[str, Any]
SortSpec = Sequence[tuple[str, int]]

#: :meth:`BlobStore.freshen` rewrites the modified time of blobs older than this; garbage
#: collection must therefore keep unreferenced blobs for longer than this (plus a save's length)
FRESH_FOR = dt.timedelta(hours=1)


@dataclass(frozen=True)
class Stores:
    """What a backend's ``open_stores(uri, *, index, blobs)`` opened: an index store, a blob store, or both.

    Defined here, beside the ABCs, so that backends depend on this module alone (the registry,
    the layer above them, re-exports it).
    """

    index: IndexStore | None
    blobs: BlobStore | None


class IndexStore(ABC):
    """Documents in named collections, queried with MongoDB's query language.

    Documents carry an ``_id`` (a :class:`bson.ObjectId` set by the caller), and may hold
    any BSON value: strings, numbers, booleans, ``None``, timezone-aware ``datetime``,
    ``ObjectId``, lists and nested dicts. ``filter`` arguments are MongoDB filters and mean
    the same on every backend (the differential test in ``tests/`` pins it).
    """

    #: URI this store was opened from, with any password removed.
    uri: str = ""
    #: whether another process can open the same store from ``uri`` (False for in-memory stores);
    #: task runners run scripts in-process when it is False.
    shared_across_processes: bool = True
    #: whether :meth:`compact` merges what the store wrote piecemeal (``s3://``); when False it
    #: raises :class:`~tensorhub.errors.UnsupportedOperationError`
    supports_compaction: bool = False
    #: whether :meth:`count` counts where the documents live, without fetching or decoding them
    #: (a server-side count); when False it costs about what a :meth:`find` of the same filter does
    supports_cheap_count: bool = False
    #: whether :meth:`create_index` builds an index the store's queries use (MongoDB); when False
    #: it is accepted and ignored, and queries scan the collection
    supports_server_side_indexes: bool = False

    @abstractmethod
    def insert_many(self, collection: str, documents: Sequence[Document]) -> None:
        """Insert documents, all or none, durably before returning."""

    @abstractmethod
    def find(
        self,
        collection: str,
        filter: Mapping[str, Any],
        sort: SortSpec | None = None,
        limit: int | None = None,
    ) -> list[Document]:
        """Return the documents matching ``filter``, ordered by ``sort`` (PyMongo form)."""

    @abstractmethod
    def update_many(self, collection: str, filter: Mapping[str, Any], update: Mapping[str, Any]) -> int:
        """Apply an update (``$set``, ``$unset``, ``$inc``, ``$push``) to every match; return the count."""

    @abstractmethod
    def find_one_and_update(
        self,
        collection: str,
        filter: Mapping[str, Any],
        update: Mapping[str, Any],
        sort: SortSpec | None = None,
    ) -> Document | None:
        """Atomically update the first match (by ``sort``) and return it as it is *after* the update.

        This is the primitive task claims rest on: two callers racing on the same document
        must never both get it, across threads, processes and machines.
        """

    @abstractmethod
    def delete_many(self, collection: str, filter: Mapping[str, Any]) -> int:
        """Delete every match; return the count."""

    def store_exists(self) -> bool:
        """Whether the store at :attr:`uri` has been created (a write made it), so that opening it for
        reading finds something rather than nothing.

        Read-only openers (``TensorHub(..., create=False)``, ``tensorhub ls``) refuse a store that
        does not exist, and a hub defers what it writes at open (its owner marker, its indexes) to
        its first write while it is False. A backend that creates nothing on open and answers
        reads of a missing store with nothing (MongoDB's databases) keeps the default, True.
        """
        return True

    def create_index(self, collection: str, keys: SortSpec) -> None:  # noqa: B027 - optional hook
        """Declare a compound index the repository queries by; backends may ignore it."""

    def insert_one(self, collection: str, document: Document) -> None:
        """Insert one document (derived from :meth:`insert_many`)."""
        self.insert_many(collection, [document])

    def find_one(
        self, collection: str, filter: Mapping[str, Any], sort: SortSpec | None = None
    ) -> Document | None:
        """Return the first match by ``sort``, or ``None``."""
        found = self.find(collection, filter, sort=sort, limit=1)
        return found[0] if found else None

    def count(self, collection: str, filter: Mapping[str, Any]) -> int:
        """Number of matches. Backends with a cheaper count override it."""
        return len(self.find(collection, filter))

    def count_by(self, collection: str, fields: Sequence[str],
                 filter: Mapping[str, Any] | None = None) -> dict[tuple[Any, ...], int]:
        """How many documents match ``filter`` for each combination of the top-level ``fields``'
        values (a missing field counts as ``None``): ``{(value, ...): count}``, as MongoDB's
        ``$group`` with ``$sum: 1``.

        Answers store-wide summaries (``TensorHub.list_projects``) in one request per collection.
        The default scans the matches; backends that can group where the documents live override it.
        """
        counts: dict[tuple[Any, ...], int] = {}
        for document in self.find(collection, filter or {}):
            key = tuple(group_key(document.get(field)) for field in fields)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def compact(self, collection: str) -> int:
        """Merge the small pieces a collection was written in; return how many were merged away.

        Only stores that declare :attr:`supports_compaction` implement it; read the flag first::

            if hub.index.supports_compaction:
                hub.index.compact("training_logs")
        """
        from tensorhub.errors import UnsupportedOperationError

        raise UnsupportedOperationError(
            f"{type(self).__name__} ({self.uri or 'this index store'}) has nothing to compact: it does not "
            "support compaction (check IndexStore.supports_compaction before calling compact())")

    def change_token(self) -> Any:
        """A value that differs once anything was written to the store since it was taken (by this
        process or any other); ``None`` where the store cannot tell cheaply (then pollers just poll).

        A hint for polling loops (runners, study drivers): equal tokens mean nothing changed, so a
        poll would find nothing new. Only ``file://`` tells (SQLite's ``data_version``).
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files. Safe to call twice."""


def group_key(value: Any) -> Any:
    """A grouping key for ``value`` (:meth:`IndexStore.count_by`): lists and dicts (unhashable) by their text."""
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


class BlobStore(ABC):
    """Byte strings under ``/``-separated keys.

    Writes are atomic per key: a reader sees the whole old value, the whole new value or
    nothing, never a partial write. That, together with the repository writing blobs
    before the record that points at them, is what keeps a crash from leaving a record
    whose bytes are missing.
    """

    uri: str = ""
    #: whether another process can open the same store from ``uri`` (False for in-memory stores)
    shared_across_processes: bool = True

    @abstractmethod
    def put(self, key: str, data: bytes | BinaryIO) -> None:
        """Store ``data`` (bytes or a readable binary stream) under ``key``, replacing any old value."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the bytes under ``key``; raise :class:`~tensorhub.errors.NotFoundError` if absent."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield every key starting with ``prefix`` (in no particular order)."""

    def store_exists(self) -> bool:
        """Whether the blob store at :attr:`uri` has been created (see :meth:`IndexStore.store_exists`);
        the default, True, suits stores that create nothing on open."""
        return True

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds a value. Derived from :meth:`get`; backends override it cheaply."""
        from tensorhub.errors import NotFoundError

        try:
            self.get(key)
        except NotFoundError:
            return False
        return True

    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, dt.datetime | None]]:
        """Yield ``(key, modified)`` for every key under ``prefix``: when the blob was last written
        or :meth:`freshen`-ed (timezone-aware UTC), or None where the backend cannot tell.

        Garbage collection deletes only unreferenced blobs older than its grace period, so a
        save still writing its chunks (its record not stored yet) keeps them. The default
        knows no times; backends override it.
        """
        for key in self.list(prefix):
            yield key, None

    def freshen(self, key: str) -> bool:
        """Whether ``key`` exists; if it does and was last written more than :data:`FRESH_FOR`
        ago, mark it as written now (as git freshens the objects it reuses).

        A save that reuses a stored chunk calls this instead of :meth:`exists`, so that a
        garbage collection running meanwhile sees the chunk as young and keeps it. The
        default only checks existence; backends override it.
        """
        return self.exists(key)

    def sweep_incomplete(self, older_than: dt.timedelta, dry_run: bool = False) -> int:
        """Remove what writes killed mid-way left behind, last touched more than ``older_than`` ago;
        return how many such leftovers were removed (or would be, with ``dry_run``).

        These are not blobs: :meth:`list` never shows them (a temp file not yet renamed into
        place, the pieces of an upload whose final step never ran). Garbage collection calls this.
        The default has nothing to sweep: a backend whose writes leave nothing, or that cannot
        tell, keeps it; backends that stage writes override it.
        """
        return 0

    def get_range(self, key: str, start: int, length: int | None = None) -> bytes:
        """Return ``length`` bytes from offset ``start`` (to the end when ``length`` is None).

        The default reads the whole blob; backends that can seek override it.
        """
        data = self.get(key)
        return data[start:] if length is None else data[start : start + length]

    def open(self, key: str) -> BinaryIO:
        """A readable stream over the blob (the default buffers it whole)."""
        return io.BytesIO(self.get(key))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; return how many were deleted."""
        keys = list(self.list(prefix))
        for key in keys:
            self.delete(key)
        return len(keys)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Safe to call twice."""
