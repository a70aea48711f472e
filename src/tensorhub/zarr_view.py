"""A dataset as a read-only zarr (v3) hierarchy: :func:`open_zarr` and :class:`DatasetStore`.

The store serves a dataset record without copying it: each ``zarr.json`` is synthesised from
the record's manifests (built once, with zarr's own metadata classes, in a memory store, and
consolidated into the root document so that xarray and zarr read the whole hierarchy in one
request), and each chunk key (``<array>/c/<i>/0/...``) is the chunk blob ``chunks/<digest>``
the manifest lists, read from the blob store on demand and verified against its digest. This
works because every chunk of format 2 (:mod:`tensorhub.chunks`) is a Blosc frame holding
``chunk_rows`` rows (the last one padded): served decoded by default (see :class:`DatasetStore`),
or as stored, for zarr's ``bytes`` + ``blosc`` codecs; an array stored in one chunk is declared
with that one chunk's shape (it is not padded).
Arrays of format 1 (saved before issue 15) are served by decoding and re-encoding each chunk
as it is read (slower; ``tensorhub upgrade`` rewrites them).

Layout: a dataset's containers become groups and its arrays zarr arrays, named by their list
index or dict key (``[X, y]`` -> ``0``, ``1``; ``{"train": {"x": X}}`` -> ``train/x``); a
dataset that is one bare array is the array ``data``. JSON values and pickled leaves are left
out. Axis 0 of every array is the dimension ``rows`` when the arrays share their length (so
``xarray.open_zarr`` aligns them), else ``<name>_dim_0``; other axes are ``<name>_dim_<k>``.
An array whose name zarr cannot hold (``/`` in it, a leading ``__``, only dots) is left out
with a warning, as is one whose dtype zarr cannot represent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tensorhub.backends.base import BlobStore
from tensorhub.chunks import IO_THREADS, Manifest, chunk_bytes, chunk_frame
from tensorhub.errors import BackendNotInstalledError, UnsupportedOperationError
from tensorhub.structure import loads_spec

try:
    import zarr
    from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
    from zarr.codecs import BloscCodec, BytesCodec
    from zarr.core.buffer import Buffer, BufferPrototype
    from zarr.storage import MemoryStore
except ImportError as exc:  # pragma: no cover - zarr is an optional dependency
    raise BackendNotInstalledError("hub.open_zarr needs zarr 3: pip install 'tensorhub[zarr]' (or pip install "
                                   "'zarr>=3')") from exc

logger = logging.getLogger(__name__)
ROWS_DIMENSION = "rows"
BARE_ARRAY_NAME = "data"


class ReadOnlyZarrError(UnsupportedOperationError, ValueError):
    """A write or delete through a dataset's zarr view: datasets change only through tensorhub."""


#: references to a pooled buffer when nobody uses it: the pool's list, the loop variable, getrefcount's argument
_UNREFERENCED = 3
_readers: ThreadPoolExecutor | None = None
_readers_lock = threading.Lock()


def _reader_pool() -> ThreadPoolExecutor:
    """The threads that read and verify chunks for every view: as many as ``find_dataset`` reads with
    (:data:`tensorhub.chunks.IO_THREADS`). zarr's own default (``asyncio.to_thread``, 6 threads on 2 cores)
    starves the one thread where zarr copies each chunk into its output, which bounds a full read."""
    global _readers
    with _readers_lock:
        if _readers is None:
            _readers = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="tensorhub-zarr")
        return _readers


def _forget_readers() -> None:  # a forked child has none of its parent's threads
    global _readers
    _readers = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_readers)


class _BufferPool:
    """Chunk-sized buffers a store reads into, reused once nothing refers to them any more.

    zarr copies each chunk it is handed into its output and drops it; reading the next chunk
    into the same (already mapped) memory instead of a fresh allocation saves the kernel's
    zeroing of every page, a large share of a full read. A buffer is reused only when its
    reference count shows that nobody holds it or a view of it (numpy views keep their base
    alive), so a chunk a caller keeps is never overwritten. At most ``limit`` buffers are kept.
    """

    def __init__(self, limit: int) -> None:
        self._buffers: list[np.ndarray] = []
        self._limit = limit
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        with self._lock:
            for buffer in self._buffers:  # no enumerate: its reused tuple would hold a reference
                if buffer.nbytes == nbytes and sys.getrefcount(buffer) == _UNREFERENCED:
                    return buffer
            buffer = np.empty(nbytes, dtype=np.uint8)
            if len(self._buffers) < self._limit:
                self._buffers.append(buffer)
            return buffer


def _refuse(what: str) -> ReadOnlyZarrError:
    return ReadOnlyZarrError(f"a dataset's zarr view is read-only: cannot {what}; change a dataset with "
                             "hub.append_dataset or hub.save_dataset")


def _valid_name(name: str) -> bool:
    return bool(name) and "/" not in name and not name.startswith("__") and set(name) != {"."}


def _array_paths(spec: dict, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], int]]:
    """``(names, schema index)`` of every array in a spec: containers become groups."""
    kind = spec["t"]
    if kind in ("array", "scalar"):
        return [(prefix or (BARE_ARRAY_NAME,), spec["i"])]
    if kind in ("list", "tuple"):
        return [p for i, node in enumerate(spec["v"]) for p in _array_paths(node, (*prefix, str(i)))]
    if kind == "dict":
        return [p for key, node in zip(spec["k"], spec["v"]) for p in _array_paths(node, (*prefix, str(key)))]
    return []


def _chunk_shape(manifest: Manifest) -> list[int]:
    """The zarr chunk shape: ``chunk_rows`` rows, or the whole array when it is one unpadded chunk."""
    if not manifest.shape:
        return []
    rows = manifest.chunk_rows if manifest.padded or len(manifest.chunks) != 1 else manifest.shape[0]
    return [max(1, rows), *(max(1, d) for d in manifest.shape[1:])]


def _synthesise(record: dict, decoded: bool) -> tuple[dict[str, bytes], dict[str, tuple[Manifest, int]]]:
    """The metadata documents (key -> JSON bytes) and chunk keys (key -> (manifest, index)) of a record."""
    memory = MemoryStore()
    attributes: dict[str, Any] = {"tensorhub": {"dataset_name": record.get("dataset_name"),
                                                "dataset_id": str(record["_id"]), "revision": record.get("revision", 1)}}
    chunks: dict[str, tuple[Manifest, int]] = {}
    shared_rows = record.get("rows") is not None
    with warnings.catch_warnings():  # zarr warns that some dtypes and consolidated metadata are not in the v3 spec
        warnings.simplefilter("ignore")
        root = zarr.open_group(memory, mode="w", zarr_format=3, attributes=attributes)
        for names, index in _array_paths(loads_spec(record["spec"])):
            path = "/".join(names)
            if not all(_valid_name(name) for name in names):
                logger.warning("dataset %r: array %r is left out of the zarr view (zarr names cannot hold '/', "
                               "start with '__' or be only dots)", record.get("dataset_name"), path)
                continue
            manifest = Manifest.from_doc(record["schema"][index])
            dtype = manifest.numpy_dtype
            dims = [ROWS_DIMENSION if k == 0 and shared_rows else f"{names[-1]}_dim_{k}"
                    for k in range(len(manifest.shape))]
            try:
                array = root.create_array(
                    path, shape=tuple(manifest.shape), chunks=tuple(_chunk_shape(manifest)), dtype=dtype,
                    serializer=BytesCodec(endian="big" if dtype.byteorder == ">" else "little"),
                    compressors=None if decoded else BloscCodec(cname="lz4", clevel=1, shuffle="shuffle"),
                    fill_value=None, dimension_names=dims or None)
                ok = np.dtype(array.dtype).newbyteorder("<") == dtype.newbyteorder("<")
            except Exception as exc:  # noqa: BLE001 - zarr's many ways of refusing a dtype
                ok, reason = False, str(exc)
            else:
                reason = f"zarr reads it as {array.dtype}"
            if not ok:
                memory._store_dict.pop(f"{path}/zarr.json", None)
                logger.warning("dataset %r: array %r (%s) is left out of the zarr view: zarr cannot represent its "
                               "dtype (%s)", record.get("dataset_name"), path, dtype, reason)
                continue
            for i in range(len(manifest.chunks)):
                coords = [str(i), *("0" for _ in manifest.shape[1:])] if manifest.shape else []
                chunks["/".join([path, "c", *coords])] = (manifest, i)
        zarr.consolidate_metadata(memory)
    metadata = {key: value.to_bytes() for key, value in memory._store_dict.items()}
    return metadata, chunks


class DatasetStore(Store):
    """A read-only :class:`zarr.abc.store.Store` over one dataset record and its blob store.

    Metadata comes from the record (synthesised once); chunks are read from the blob store when
    zarr asks for them and verified against their content address, never copied elsewhere.
    Every write, delete or writable reopen is refused with :class:`ReadOnlyZarrError`.

    ``decoded`` (default): the store hands zarr each chunk's raw bytes (a frame without compression
    read straight into a reused buffer, a compressed one decoded into it, in the view's reader
    threads) and the metadata declares no compressor: one decode and no copy less than zarr's
    Blosc codec would make, which keeps a full read near ``find_dataset``'s speed
    (``benchmarks/bench_zarr.py``). ``decoded=False``
    serves the stored Blosc frames themselves under a ``blosc`` codec, for copying the hierarchy
    into another zarr store as it is stored (compressed).
    """

    supports_writes = False
    supports_deletes = False
    supports_listing = True

    def __init__(self, blobs: BlobStore, record: dict, decoded: bool = True) -> None:
        super().__init__(read_only=True)
        self._blobs = blobs
        self._decoded = decoded
        self._record_id = record["_id"]
        self._revision = record.get("revision", 1)
        self._name = record.get("dataset_name")
        self._metadata, self._chunks = _synthesise(record, decoded)
        self._buffers = _BufferPool(2 * IO_THREADS)

    def __repr__(self) -> str:
        return f"DatasetStore(dataset_name={self._name!r}, _id={self._record_id}, revision={self._revision})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, DatasetStore) and other._blobs is self._blobs
                and other._record_id == self._record_id and other._revision == self._revision)

    def __hash__(self) -> int:
        return hash((id(self._blobs), self._record_id, self._revision))

    def with_read_only(self, read_only: bool = False) -> DatasetStore:
        if not read_only:
            raise _refuse("open it for writing")
        return self

    def _bytes(self, key: str) -> Any:
        """The bytes under ``key`` (a metadata document, a chunk: decoded into a pooled uint8 array, or
        its frame) or None when there is no such key."""
        if key in self._metadata:
            return self._metadata[key]
        where = self._chunks.get(key)
        if where is None:
            return None
        if not self._decoded:
            return chunk_frame(self._blobs, *where)
        manifest, index = where
        buffer = self._buffers.take(manifest.stored_nbytes(index)) if manifest.chunk_format >= 2 else None
        return chunk_bytes(self._blobs, manifest, index, buffer)

    async def _read(self, key: str) -> Any:
        # blob stores are synchronous: read in the view's threads, keeping zarr's loop free
        return await asyncio.get_running_loop().run_in_executor(_reader_pool(), self._bytes, key)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        data = self._metadata.get(key)
        if data is None:
            if key not in self._chunks:
                return None
            data = await self._read(key)
            if data is None:
                return None
        data = _byte_range(data, byte_range)
        if isinstance(data, np.ndarray):
            return prototype.buffer.from_array_like(data)
        return prototype.buffer.from_bytes(data)

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(key, prototype, byte_range) for key, byte_range in key_ranges)))

    async def exists(self, key: str) -> bool:
        return key in self._metadata or key in self._chunks

    async def set(self, key: str, value: Buffer) -> None:
        raise _refuse(f"write {key!r}")

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        raise _refuse(f"write {key!r}")

    async def delete(self, key: str) -> None:
        raise _refuse(f"delete {key!r}")

    async def delete_dir(self, prefix: str) -> None:
        raise _refuse(f"delete {prefix!r}")

    async def clear(self) -> None:
        raise _refuse("clear it")

    def _keys(self) -> list[str]:
        return [*self._metadata, *self._chunks]

    async def list(self) -> AsyncIterator[str]:
        for key in self._keys():
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in self._keys():
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/")
        start = prefix + "/" if prefix else ""
        seen: set[str] = set()
        for key in self._keys():
            if key.startswith(start) and key != prefix:
                child = key[len(start):].split("/")[0]
                if child not in seen:
                    seen.add(child)
                    yield child

    async def getsize(self, key: str) -> int:
        data = await self._read(key)
        if data is None:
            raise FileNotFoundError(key)
        return len(data)


def _byte_range(data: Any, byte_range: ByteRequest | None) -> Any:
    if byte_range is None:
        return data
    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start:byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset:]
    if isinstance(byte_range, SuffixByteRequest):
        return data[max(0, len(data) - byte_range.suffix):]
    raise TypeError(f"unexpected byte range {byte_range!r}")


def open_zarr(blobs: BlobStore, record: dict) -> zarr.Group:
    """The dataset ``record`` as a read-only ``zarr.Group`` (see the module docstring for its layout)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # consolidated metadata is not yet in the v3 spec: zarr says so on each read
        return zarr.open_group(DatasetStore(blobs, record), mode="r")

