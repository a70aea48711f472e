"""A store that does not exist yet is created by the first write through a hub, never by opening it.

Opening a hub writes two things besides records: the owner marker that ties the blob store to
its index (:func:`tensorhub.ownership.claim_blobs`) and the indexes each record kind declares.
On a store that exists these are written at open, as before. On one that does not
(:meth:`IndexStore.store_exists` is False: a ``file://`` path with a typo), the hub wraps its
stores in :class:`DeferredIndex` and :class:`DeferredBlobs`: reads go straight through (and find
nothing), updates and deletes of a store that still does not exist match nothing, index
declarations are kept, and the first write of either store runs the deferred steps
(:class:`Creation`: the owner marker, then the kept index declarations) before it, so the marker
is in place before any chunk is written, exactly as if it had been written at open. Later calls
cost one forwarding call each (the wrappers stay: :class:`~tensorhub.records.Records` holds them).

Nothing here knows a backend: the wrappers only forward to the :class:`IndexStore` and
:class:`BlobStore` they wrap.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

from tensorhub.backends.base import BlobStore, Document, IndexStore, SortSpec


def unwrap(store: Any) -> Any:
    """The backend store behind a deferred wrapper (``hub.index``/``hub.blobs`` show the real one)."""
    return store._inner if isinstance(store, (DeferredIndex, DeferredBlobs)) else store


class Creation:
    """Runs its steps once, before the first write (thread-safe; a failure leaves them to the next write)."""

    def __init__(self, *steps: Callable[[], None]) -> None:
        self.steps = list(steps)
        self.lock = threading.RLock()
        self.done = False

    def __call__(self) -> None:
        if self.done:
            return
        with self.lock:
            if not self.done:
                for step in self.steps:
                    step()
                self.done = True


class DeferredIndex(IndexStore):
    """An :class:`IndexStore` that runs :class:`Creation` before its first write; reads are forwarded."""

    def __init__(self, inner: IndexStore, creation: Creation) -> None:
        self._inner, self._creation = inner, creation
        self.uri = inner.uri
        self.shared_across_processes = inner.shared_across_processes
        self.supports_compaction = inner.supports_compaction
        self.supports_cheap_count = inner.supports_cheap_count
        self.supports_server_side_indexes = inner.supports_server_side_indexes
        self._declared: list[tuple[str, SortSpec]] = []  # declared before the store existed: made with it
        creation.steps.append(self._make_declared_indexes)

    def _make_declared_indexes(self) -> None:
        for collection, keys in self._declared:
            self._inner.create_index(collection, keys)

    def __getattr__(self, name: str) -> Any:  # a backend's own attributes (for tests and inspection)
        if name in ("_inner", "_creation"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def _matching_write(self) -> bool:
        """Before an update or delete: nothing to create while the store does not exist (it matches nothing)."""
        if self._creation.done or self._inner.store_exists():
            self._creation()
            return True
        return False

    def store_exists(self) -> bool:
        return self._inner.store_exists()

    def insert_many(self, collection: str, documents: Sequence[Document]) -> None:
        self._creation()
        self._inner.insert_many(collection, documents)

    def find(self, collection: str, filter: Mapping[str, Any], sort: SortSpec | None = None,
             limit: int | None = None) -> list[Document]:
        return self._inner.find(collection, filter, sort=sort, limit=limit)

    def count(self, collection: str, filter: Mapping[str, Any]) -> int:
        return self._inner.count(collection, filter)

    def update_many(self, collection: str, filter: Mapping[str, Any], update: Mapping[str, Any]) -> int:
        self._matching_write()
        return self._inner.update_many(collection, filter, update)

    def find_one_and_update(self, collection: str, filter: Mapping[str, Any], update: Mapping[str, Any],
                            sort: SortSpec | None = None) -> Document | None:
        self._matching_write()
        return self._inner.find_one_and_update(collection, filter, update, sort=sort)

    def delete_many(self, collection: str, filter: Mapping[str, Any]) -> int:
        self._matching_write()
        return self._inner.delete_many(collection, filter)

    def create_index(self, collection: str, keys: SortSpec) -> None:
        with self._creation.lock:
            if not self._creation.done:  # declaring an index is no reason to create the store
                self._declared.append((collection, keys))
                return
        self._inner.create_index(collection, keys)

    def compact(self, collection: str) -> int:
        self._matching_write()
        return self._inner.compact(collection)

    def change_token(self) -> Any:
        return self._inner.change_token()

    def close(self) -> None:
        self._inner.close()


class DeferredBlobs(BlobStore):
    """A :class:`BlobStore` that runs :class:`Creation` before its first put; everything else is forwarded."""

    def __init__(self, inner: BlobStore, creation: Creation) -> None:
        self._inner, self._creation = inner, creation
        self.uri = inner.uri
        self.shared_across_processes = inner.shared_across_processes

    def __getattr__(self, name: str) -> Any:
        if name in ("_inner", "_creation"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def store_exists(self) -> bool:
        return self._inner.store_exists()

    def put(self, key: str, data: bytes | BinaryIO) -> None:
        self._creation()
        self._inner.put(key, data)

    def get(self, key: str) -> bytes:
        return self._inner.get(key)

    def get_range(self, key: str, start: int, length: int | None = None) -> bytes:
        return self._inner.get_range(key, start, length)

    def open(self, key: str) -> BinaryIO:
        return self._inner.open(key)

    def exists(self, key: str) -> bool:
        return self._inner.exists(key)

    def freshen(self, key: str) -> bool:
        return self._inner.freshen(key)

    def delete(self, key: str) -> None:
        self._inner.delete(key)

    def delete_prefix(self, prefix: str) -> int:
        return self._inner.delete_prefix(prefix)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self._inner.list(prefix)

    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, dt.datetime | None]]:
        return self._inner.list_modified(prefix)

    def sweep_incomplete(self, older_than: dt.timedelta, dry_run: bool = False) -> int:
        return self._inner.sweep_incomplete(older_than, dry_run=dry_run)

    def close(self) -> None:
        self._inner.close()
